//! Process lifecycle: follow gateway children (nginx workers started after attach), and report
//! deaths and fatal signals of gateways and of listening processes (the upstreams on this host).
use aya_ebpf::{
    helpers::bpf_get_current_task, macros::tracepoint, programs::TracePointContext,
};
use tracer_common::{EventKind, counter};

use crate::maps::{cfg_get, 
    LISTENERS, TRACED, count, current_cgroup, current_comm, current_ids, emit,
    is_traced, read_kernel,
};

const SIGTERM: i32 = 15;

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    let traced = is_traced(tgid);
    let listener = unsafe { LISTENERS.get(tgid) }.is_some();
    if !traced && !listener {
        return 0;
    }
    let Ok(child) = (unsafe { ctx.read_at::<i32>(cfg_get!(tp.fork_child_pid) as usize) }) else {
        return 0;
    };
    let child = child as u32;
    if traced && TRACED.insert(child, 1, 0).is_err() {
        count(counter::TRACED_MAP_FULL);
        // Rare and worth a sentence: aya-log stays off every hot path.
        aya_log_ebpf::warn!(&ctx, "traced-process map full: child {} of {} is not followed", child, tgid);
    }
    // A forked worker of a listening server inherits the listening socket.
    if listener && LISTENERS.insert(child, 1, 0).is_err() {
        count(counter::LISTENER_MAP_FULL);
    }
    if traced {
        emit(EventKind::ProcessFork, |e| {
            e.pid = tgid;
            e.tid = tid;
            e.comm = current_comm();
            e.cgroup = current_cgroup();
            e.aux = child;
        });
    }
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    let traced = is_traced(tgid);
    let listener = unsafe { LISTENERS.get(tgid) }.is_some();
    if !traced && !listener {
        return 0;
    }
    let group_dead = unsafe { ctx.read_at::<u8>(cfg_get!(tp.exit_group_dead) as usize) }.unwrap_or(1) != 0;
    if tid != tgid {
        let _ = TRACED.remove(tid);
        let _ = LISTENERS.remove(tid);
    }
    if !group_dead {
        return 0;
    }
    let task = unsafe { bpf_get_current_task() };
    let exit_code: i32 = read_kernel(task, cfg_get!(kernel.task_exit_code)).unwrap_or(0);
    emit(EventKind::ProcessExit, |e| {
        e.pid = tgid;
        e.tid = tid;
        e.comm = current_comm();
        e.cgroup = current_cgroup();
        e.value = exit_code as i64;
        e.aux = if traced { 1 } else { 0 };
    });
    let _ = TRACED.remove(tgid);
    let _ = LISTENERS.remove(tgid);
    0
}

#[tracepoint(category = "signal", name = "signal_generate")]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    let (Ok(sig), Ok(pid)) = (unsafe {
        (ctx.read_at::<i32>(cfg_get!(tp.signal_sig) as usize), ctx.read_at::<i32>(cfg_get!(tp.signal_pid) as usize))
    }) else {
        return 0;
    };
    // Fatal signals (KILL, SEGV, ABRT, BUS, FPE, ILL) are rare, so report them host-wide;
    // TERM only for the processes we watch.
    let fatal = matches!(sig, 9 | 11 | 6 | 7 | 8 | 4);
    if !fatal {
        if sig != SIGTERM {
            return 0;
        }
        let pid = pid as u32;
        if !is_traced(pid) && unsafe { LISTENERS.get(pid) }.is_none() {
            return 0;
        }
    }
    let comm = unsafe { ctx.read_at::<[u8; 16]>(cfg_get!(tp.signal_comm) as usize) }.unwrap_or([0; 16]);
    let result = unsafe { ctx.read_at::<i32>(cfg_get!(tp.signal_result) as usize) }.unwrap_or(0);
    let (sender, _) = current_ids();
    emit(EventKind::Signal, |e| {
        e.pid = pid as u32;
        e.tid = pid as u32;
        e.comm = comm;
        e.value = sig as i64;
        e.aux = sender;
        e.new_state = result as u8;
    });
    0
}
