//! Process lifecycle: follow gateway children (nginx workers started after attach), and report
//! deaths and fatal signals of gateways and of listening processes (the upstreams on this host).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{COMM_LEN, EventKind, counter, signal};

use crate::{
    config::{cfg_get, count},
    done,
    event::{Who, emit},
    maps::{LISTENERS, TRACED, is_listener, is_traced},
    read::{current_ids, current_task, read_kernel, tp_field},
};

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    done(try_sched_process_fork(&ctx))
}

fn try_sched_process_fork(ctx: &TracePointContext) -> Result<(), i32> {
    let (tgid, tid) = current_ids();
    let traced = is_traced(tgid);
    let listener = is_listener(tgid);
    if !traced && !listener {
        return Ok(());
    }
    let child = tp_field::<i32>(ctx, cfg_get!(tp.fork_child_pid))? as u32;
    if traced && TRACED.insert(child, 1, 0).is_err() {
        count(counter::TRACED_MAP_FULL);
        // Rare and worth a sentence: aya-log stays off every hot path.
        aya_log_ebpf::warn!(ctx, "traced-process map full: child {} of {} is not followed", child, tgid);
    }
    // A forked worker of a listening server inherits the listening socket.
    if listener && LISTENERS.insert(child, 1, 0).is_err() {
        count(counter::LISTENER_MAP_FULL);
    }
    if traced {
        emit(EventKind::ProcessFork, Who::Current(tgid, tid), |e| e.aux = child);
    }
    Ok(())
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    done(try_sched_process_exit(&ctx))
}

fn try_sched_process_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let (tgid, tid) = current_ids();
    let traced = is_traced(tgid);
    let listener = is_listener(tgid);
    if !traced && !listener {
        return Ok(());
    }
    let group_dead = tp_field::<u8>(ctx, cfg_get!(tp.exit_group_dead)).unwrap_or(1) != 0;
    if tid != tgid {
        let _ = TRACED.remove(tid);
        let _ = LISTENERS.remove(tid);
    }
    if !group_dead {
        return Ok(());
    }
    let exit_code: i32 = read_kernel(current_task(), cfg_get!(kernel.task_exit_code)).unwrap_or(0);
    emit(EventKind::ProcessExit, Who::Current(tgid, tid), |e| {
        e.value = exit_code as i64;
        e.aux = traced as u32;
    });
    let _ = TRACED.remove(tgid);
    let _ = LISTENERS.remove(tgid);
    Ok(())
}

#[tracepoint(category = "signal", name = "signal_generate")]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    done(try_signal_generate(&ctx))
}

fn try_signal_generate(ctx: &TracePointContext) -> Result<(), i32> {
    let sig: i32 = tp_field(ctx, cfg_get!(tp.signal_sig))?;
    let pid = tp_field::<i32>(ctx, cfg_get!(tp.signal_pid))? as u32;
    // Fatal signals (crashes, SIGKILL) are rare, so report them host-wide; SIGTERM only for the
    // processes we watch.
    if !signal::is_fatal(sig) && (sig != signal::SIGTERM || (!is_traced(pid) && !is_listener(pid))) {
        return Ok(());
    }
    let comm = tp_field(ctx, cfg_get!(tp.signal_comm)).unwrap_or([0; COMM_LEN]);
    let result: i32 = tp_field(ctx, cfg_get!(tp.signal_result)).unwrap_or(0);
    let (sender, _) = current_ids();
    emit(EventKind::Signal, Who::Process(pid, comm), |e| {
        e.value = sig as i64;
        e.aux = sender;
        e.new_state = result as u8;
    });
    Ok(())
}
