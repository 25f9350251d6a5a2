//! Loading and attaching the kernel programs, and the userspace handles to their maps.
pub mod btf;
pub mod layout;
pub mod uprobes;

use std::path::PathBuf;

use crate::health::{AttachReport, LruEvictions};
use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
use tracer_common::{Config, counter};

static PROBES_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/upstrace-ebpf"));

pub const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";

/// How a program attaches. Only tracepoints and tp_btf: kprobes and BPF trampolines are not
/// available everywhere (this project's reference kernel has neither).
enum Hook {
    Tracepoint(&'static str, &'static str),
    TpBtf(&'static str),
}

struct ProgramSpec {
    program: &'static str,
    hook: Hook,
    /// Without a required program upstrace cannot do its job, so it refuses to start.
    required: bool,
    /// Attached only when this other program (the same hook, cheaper) could not be.
    fallback_for: Option<&'static str>,
}

/// Programs loaded at start and attached only when wanted: their hooks run for every packet,
/// or every close(2), on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDemand {
    /// Every packet on the host runs it, and it only looks for ICMP errors about traced
    /// flows. The errors that end a connect at once reach the socket too
    /// (`inet_sk_error_report`: ICMP port unreachable as ECONNREFUSED without a reset,
    /// administratively prohibited as EHOSTUNREACH/ENETUNREACH before any retransmit), so it
    /// is attached only once a traced connection retransmits (a router's "host unreachable"
    /// answers each retry), and taken off again after `PACKET_HOOK_IDLE` without one.
    Packets,
    /// Every close(2) on the host runs it (and any syscall hook puts every syscall of every
    /// task on the kernel's slower tracing path), and it only looks for unix-socket upstreams
    /// (PHP-FPM): a gateway's close is the one sign of it giving up on one. So it is attached
    /// once the first unix-socket upstream's connect is seen, and stays. Until then the kernel
    /// ships unix-socket stories as they happen (their connects included) instead of holding
    /// them for a close it cannot see (`CLOSE_HOOKED`); only a give-up within that first moment
    /// goes unseen.
    UnixClose,
}

impl OnDemand {
    pub const ALL: [OnDemand; 2] = [OnDemand::Packets, OnDemand::UnixClose];

    pub fn program(self) -> &'static str {
        match self {
            OnDemand::Packets => "netif_receive_skb",
            OnDemand::UnixClose => "sys_enter_close",
        }
    }

    fn of_program(program: &str) -> Option<OnDemand> {
        Self::ALL.into_iter().find(|h| h.program() == program)
    }
}

pub const PACKET_HOOK_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec { program: "inet_sock_set_state_btf", hook: Hook::TpBtf("inet_sock_set_state"), required: false, fallback_for: None },
    ProgramSpec {
        program: "inet_sock_set_state",
        hook: Hook::Tracepoint("sock", "inet_sock_set_state"),
        required: true,
        fallback_for: Some("inet_sock_set_state_btf"),
    },
    ProgramSpec { program: "tcp_receive_reset", hook: Hook::Tracepoint("tcp", "tcp_receive_reset"), required: false, fallback_for: None },
    ProgramSpec { program: "tcp_send_reset", hook: Hook::Tracepoint("tcp", "tcp_send_reset"), required: false, fallback_for: None },
    ProgramSpec { program: "tcp_retransmit_skb", hook: Hook::Tracepoint("tcp", "tcp_retransmit_skb"), required: false, fallback_for: None },
    ProgramSpec { program: "inet_sk_error_report", hook: Hook::TpBtf("inet_sk_error_report"), required: false, fallback_for: None },
    ProgramSpec { program: "sock_send_length_btf", hook: Hook::TpBtf("sock_send_length"), required: false, fallback_for: None },
    ProgramSpec {
        program: "sock_send_length",
        hook: Hook::Tracepoint("sock", "sock_send_length"),
        required: true,
        fallback_for: Some("sock_send_length_btf"),
    },
    ProgramSpec { program: "sock_recv_length_btf", hook: Hook::TpBtf("sock_recv_length"), required: false, fallback_for: None },
    ProgramSpec {
        program: "sock_recv_length",
        hook: Hook::Tracepoint("sock", "sock_recv_length"),
        required: true,
        fallback_for: Some("sock_recv_length_btf"),
    },
    ProgramSpec {
        program: "sys_exit_connect",
        hook: Hook::Tracepoint("syscalls", "sys_exit_connect"),
        required: false,
        fallback_for: None,
    },
    ProgramSpec { program: "sys_enter_close", hook: Hook::Tracepoint("syscalls", "sys_enter_close"), required: false, fallback_for: None },
    ProgramSpec {
        program: "sched_process_fork",
        hook: Hook::Tracepoint("sched", "sched_process_fork"),
        required: true,
        fallback_for: None,
    },
    ProgramSpec {
        program: "sched_process_exit",
        hook: Hook::Tracepoint("sched", "sched_process_exit"),
        required: false,
        fallback_for: None,
    },
    ProgramSpec { program: "signal_generate", hook: Hook::Tracepoint("signal", "signal_generate"), required: false, fallback_for: None },
    ProgramSpec { program: "kfree_skb", hook: Hook::Tracepoint("skb", "kfree_skb"), required: false, fallback_for: None },
    ProgramSpec { program: "netif_receive_skb", hook: Hook::Tracepoint("net", "netif_receive_skb"), required: false, fallback_for: None },
];

/// Which hooks `measure_floor` covers (a command-line choice).
pub use crate::cli::FloorSet;

const FLOOR_SOCKET_HOOKS: [&str; 5] = ["sock_send_length", "sock_recv_length", "netif_receive_skb", "inet_sock_set_state", "kfree_skb"];

/// Messages the kernel programs log through aya-log (rare: maps full). Printed on stderr,
/// unless the dashboard owns the terminal, then kept for it.
pub struct KernelLog;

pub static KERNEL_LOG: KernelLog = KernelLog;
pub static KERNEL_MESSAGES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
pub static QUIET_STDERR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let line = format!("upstrace: kernel {}: {}", record.level().as_str().to_lowercase(), record.args());
        if !QUIET_STDERR.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("{line}");
        }
        if let Ok(mut m) = KERNEL_MESSAGES.lock()
            && m.len() < 100
        {
            m.push(line);
        }
    }

    fn flush(&self) {}
}

pub struct Probes {
    ebpf: Ebpf,
    /// aya-log's channel from the kernel programs; `poll_kernel_log` drains it.
    pub logger: Option<aya_log::EbpfLogger<&'static KernelLog>>,
    /// Held while BPF run-time statistics are wanted (the kernel counts only while held).
    stats_fd: Option<std::os::fd::OwnedFd>,
    pub report: AttachReport,
    traced: BpfHashMap<MapData, u32, u32>,
    listeners: BpfHashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, u64>,
    /// The LRU maps, only counted (their evictions: added - removed - present).
    closed: BpfHashMap<MapData, u64, tracer_common::SockOwner>,
    peers: BpfHashMap<MapData, tracer_common::PeerKey, u64>,
    unix: BpfHashMap<MapData, u64, tracer_common::SockOwner>,
    evicted: std::cell::Cell<LruEvictions>,
    pub decoder: crate::engine::decode::Decoder,
    /// The on-demand hooks' links while attached (`OnDemand` order).
    on_demand_links: [Option<aya::programs::trace_point::TracePointLinkId>; OnDemand::ALL.len()],
}

/// Refuse early, with one clear line, when the machine cannot run upstrace.
pub fn preflight(btf_path: &std::path::Path) -> Result<()> {
    if !has_bpf_privileges() {
        bail!("upstrace needs root (or CAP_BPF and CAP_PERFMON) to load eBPF programs: run it with sudo");
    }
    if !btf_path.exists() {
        bail!("no kernel BTF at {}: upstrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y", btf_path.display());
    }
    Ok(())
}

fn has_bpf_privileges() -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    let caps = status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).unwrap_or(0);
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

pub fn btf_path() -> PathBuf {
    std::env::var_os("UPSTRACE_BTF").map(PathBuf::from).unwrap_or_else(|| DEFAULT_BTF.into())
}

impl Probes {
    /// Load and attach every program; returns the probes and the ring buffer of events.
    pub fn load() -> Result<(Self, RingBuf<MapData>)> {
        let btf_path = btf_path();
        preflight(&btf_path)?;
        let btf = btf::Btf::from_file(&btf_path)?;
        let tracefs = layout::Tracefs::open()?;
        let (drop_reason_names, drop_reasons) = layout::drop_reasons(&btf);
        let config = Config {
            self_tgid: std::process::id(),
            tp: layout::tracepoint_layout(&tracefs)?,
            kernel: layout::kernel_layout(&btf)?,
            drop_reasons,
        };
        // Raise the memlock limit for kernels that still charge BPF memory to it.
        let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };

        let aya_btf =
            aya::Btf::parse_file(&btf_path, aya::Endianness::default()).map_err(|e| anyhow!("kernel BTF {}: {e}", btf_path.display()))?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&aya_btf))
            .override_global("CONFIG", &config, true)
            .load(probes_object()?)
            .map_err(|e| map_load_error(anyhow!(e)))?;

        let mut report = AttachReport::default();
        for spec in PROGRAMS {
            if OnDemand::of_program(spec.program).is_some() {
                match load_only(&mut ebpf, spec) {
                    Ok(()) => report.on_demand.push(spec.program.to_owned()),
                    Err(e) => report.skipped.push((spec.program.to_owned(), format!("{e:#}"))),
                }
                continue;
            }
            if spec.fallback_for.is_some_and(|better| report.attached.iter().any(|a| a == better)) {
                continue;
            }
            // The tp_btf forms of the socket hooks read the socket's protocol (the classic
            // records carry it): without its offset in BTF, the classic ones are attached.
            let preferred = PROGRAMS.iter().any(|classic| classic.fallback_for == Some(spec.program));
            if preferred && config.kernel.sk_protocol == 0 {
                report.skipped.push((spec.program.to_owned(), "sock.sk_protocol not in the kernel's BTF".to_owned()));
                continue;
            }
            match attach(&mut ebpf, spec, &aya_btf) {
                Ok(()) => report.attached.push(spec.program.to_owned()),
                Err(e) if spec.required => {
                    return Err(map_load_error(e.context(format!("required program {}", spec.program))));
                }
                Err(e) => report.skipped.push((spec.program.to_owned(), format!("{e:#}"))),
            }
        }
        let logger = aya_log::EbpfLogger::init_with_logger(&mut ebpf, &KERNEL_LOG).ok();
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map")?)?;
        let traced = BpfHashMap::try_from(ebpf.take_map("TRACED").context("TRACED map")?)?;
        let listeners = BpfHashMap::try_from(ebpf.take_map("LISTENERS").context("LISTENERS map")?)?;
        let counters = PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map")?)?;
        let closed = BpfHashMap::try_from(ebpf.take_map("CLOSED").context("CLOSED map")?)?;
        let peers = BpfHashMap::try_from(ebpf.take_map("PEERS").context("PEERS map")?)?;
        let unix = BpfHashMap::try_from(ebpf.take_map("UNIX_OWNED").context("UNIX_OWNED map")?)?;
        let decoder = crate::engine::decode::Decoder { drop_reasons: drop_reason_names };
        drop(btf);
        drop(aya_btf);
        // Parsing the kernel's BTF twice took tens of MiB that are garbage now: hand them back.
        unsafe { libc::malloc_trim(0) };
        let evicted = std::cell::Cell::new(LruEvictions::default());
        Ok((
            Self {
                ebpf,
                logger,
                stats_fd: None,
                report,
                traced,
                listeners,
                counters,
                closed,
                peers,
                unix,
                evicted,
                decoder,
                on_demand_links: [None, None],
            },
            ring,
        ))
    }

    /// Have an on-demand hook attached (once).
    pub fn attach_on_demand(&mut self, hook: OnDemand) {
        let program = hook.program();
        let slot = hook as usize;
        if self.on_demand_links[slot].is_some() || !self.report.on_demand.iter().any(|p| p == program) {
            return;
        }
        let Some(Hook::Tracepoint(category, name)) = PROGRAMS.iter().find(|s| s.program == program).map(|s| &s.hook) else { return };
        let Some(tp) = self.ebpf.program_mut(program).and_then(|p| <&mut TracePoint>::try_from(p).ok()) else { return };
        match tp.attach(category, name) {
            Ok(link) => {
                self.on_demand_links[slot] = Some(link);
                if hook == OnDemand::UnixClose {
                    self.set_close_hooked();
                }
            }
            Err(e) => {
                // Said once: the hook is not tried again.
                eprintln!("upstrace: attaching {program} failed: {e}");
                self.report.on_demand.retain(|p| p != program);
                self.report.skipped.push((program.to_owned(), format!("attach: {e}")));
            }
        }
    }

    /// Tell the kernel programs that close(2) is seen now: unix-socket upstreams' stories may
    /// be held until their close (see `CLOSE_HOOKED`).
    fn set_close_hooked(&mut self) {
        let switched =
            self.ebpf.map_mut("CLOSE_HOOKED").and_then(|m| aya::maps::Array::<_, u32>::try_from(m).ok()).map(|mut a| a.set(0, 1, 0));
        if !matches!(switched, Some(Ok(()))) {
            eprintln!("upstrace: could not tell the kernel programs that close(2) is hooked: unix-socket upstreams stay unheld");
        }
    }

    /// Take an on-demand hook off (nothing in trouble for a while).
    pub fn detach_on_demand(&mut self, hook: OnDemand) {
        let Some(link) = self.on_demand_links[hook as usize].take() else { return };
        if let Some(tp) = self.ebpf.program_mut(hook.program()).and_then(|p| <&mut TracePoint>::try_from(p).ok()) {
            let _ = tp.detach(link);
        }
    }

    /// Whether an on-demand hook is attached now.
    pub fn is_attached(&self, hook: OnDemand) -> bool {
        self.on_demand_links[hook as usize].is_some()
    }

    /// Attach empty programs to the hooks of `set`, hold them for `duration`, and return
    /// (hooks, runs, total ns; the last two with `stats` only): what running any program at
    /// these hooks costs here (`cargo xtask bench` compares upstrace against it).
    pub fn measure_floor(set: FloorSet, duration: std::time::Duration, stats: bool) -> Result<(usize, u64, u64)> {
        let btf_path = btf_path();
        preflight(&btf_path)?;
        let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
        let aya_btf =
            aya::Btf::parse_file(&btf_path, aya::Endianness::default()).map_err(|e| anyhow!("kernel BTF {}: {e}", btf_path.display()))?;
        let mut ebpf = EbpfLoader::new().btf(Some(&aya_btf)).load(probes_object()?).map_err(|e| map_load_error(anyhow!(e)))?;
        // Counting run time costs two clock reads per run: only when asked.
        let _stats = match stats {
            true => Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| anyhow!("enabling BPF run-time stats: {e}"))?),
            false => None,
        };
        let mut names = vec![];
        match set {
            FloorSet::All | FloorSet::SocketClassic => {
                let program: &mut TracePoint = ebpf.program_mut("floor").context("floor program missing")?.try_into()?;
                program.load().map_err(|e| anyhow!("load floor: {e}"))?;
                let mut hooks = 0;
                // All: the hooks upstrace keeps attached (not the on-demand ones), as it attaches
                // them: the state hook as tp_btf (its classic form is only a fallback).
                let all = set == FloorSet::All;
                for spec in PROGRAMS.iter().filter(|s| !all || (OnDemand::of_program(s.program).is_none() && s.fallback_for.is_none())) {
                    if let Hook::Tracepoint(category, name) = spec.hook
                        && (all || FLOOR_SOCKET_HOOKS.contains(&name))
                        && program.attach(category, name).is_ok()
                    {
                        hooks += 1;
                    }
                }
                names.push(("floor".to_string(), hooks));
                // The hooks upstrace attaches as tp_btf: those whose classic form is a fallback.
                for spec in PROGRAMS.iter().filter(|s| all && s.fallback_for.is_some()) {
                    let Hook::Tracepoint(_, hook) = spec.hook else { continue };
                    let name = format!("floor_btf_{hook}");
                    let program: &mut BtfTracePoint = ebpf.program_mut(&name).context("floor program missing")?.try_into()?;
                    program.load(hook, &aya_btf).map_err(|e| anyhow!("load {name}: {e}"))?;
                    program.attach().map_err(|e| anyhow!("attach {name}: {e}"))?;
                    names.push((name, 1));
                }
            }
            FloorSet::SocketBtf => {
                for hook in FLOOR_SOCKET_HOOKS {
                    let name = format!("floor_btf_{hook}");
                    let program: &mut BtfTracePoint = ebpf.program_mut(&name).context("floor program missing")?.try_into()?;
                    program.load(hook, &aya_btf).map_err(|e| anyhow!("load {name}: {e}"))?;
                    program.attach().map_err(|e| anyhow!("attach {name}: {e}"))?;
                    names.push((name, 1));
                }
            }
        }
        std::thread::sleep(duration);
        let (mut runs, mut ns) = (0, 0);
        for (name, _) in &names {
            let info = ebpf.program(name).context("floor program")?.info()?;
            runs += info.run_count();
            ns += info.run_time().as_nanos() as u64;
        }
        Ok((names.iter().map(|n| n.1).sum(), runs, ns))
    }

    pub fn trace_pid(&mut self, pid: u32) -> Result<()> {
        self.traced.insert(pid, 1, 0).with_context(|| format!("tracing pid {pid}"))
    }

    pub fn untrace_pid(&mut self, pid: u32) {
        let _ = self.traced.remove(&pid);
    }

    pub fn traced_pids(&self) -> Vec<u32> {
        self.traced.keys().filter_map(|k| k.ok()).collect()
    }

    pub fn watch_listener(&mut self, pid: u32) {
        let _ = self.listeners.insert(pid, 1, 0);
    }

    /// Ask the kernel to count run time and runs of every BPF program while upstrace runs
    /// (no global sysctl is left on: the counting ends with this process).
    pub fn enable_run_time_stats(&mut self) -> Result<()> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| anyhow!("enabling BPF run-time stats: {e}"))?;
        self.stats_fd = Some(fd);
        Ok(())
    }

    /// (program, runs, total ns) for each attached program, when stats are enabled.
    pub fn program_costs(&self) -> Vec<(String, u64, u64)> {
        if self.stats_fd.is_none() {
            return vec![];
        }
        self.ebpf
            .programs()
            .filter(|(name, _)| self.report.attached.iter().chain(&self.report.on_demand).any(|a| a == name))
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some((name.to_owned(), info.run_count(), info.run_time().as_nanos() as u64))
            })
            .collect()
    }

    /// Kernel-side loss counters, summed over CPUs, by name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        (0..counter::COUNT).filter(|&i| i < counter::LOSSES).map(|i| (counter::NAMES[i as usize], self.counter(i))).collect()
    }

    /// 5xx status lines not reported because no socket send followed their write in time.
    pub fn status_lines_expired(&self) -> u64 {
        self.counter(counter::STATUS_EXPIRED)
    }

    /// Exchanges shipped at once because the held-exchange map was full (a cost, not a loss).
    pub fn exchanges_shipped_early(&self) -> u64 {
        self.counter(counter::EXCHANGE_MAP_FULL)
    }

    /// Entries the kernel's LRU maps evicted so far.
    /// BPF does not count evictions, so they are derived: entries added - removed - present.
    /// The maps are walked only once the additions exceed their capacity (before that no
    /// eviction can have happened), and the result never goes down.
    pub fn lru_evictions(&self) -> LruEvictions {
        let before = self.evicted.get();
        let live = self.counter(counter::CLOSED_ADDED).saturating_sub(self.counter(counter::CLOSED_REMOVED));
        let closed_sockets = lru_evicted(before.closed_sockets, live, tracer_common::MAX_CLOSED_SOCKETS, || entries(&self.closed));
        let live = self.counter(counter::PEERS_ADDED);
        let upstream_endpoints = lru_evicted(before.upstream_endpoints, live, tracer_common::MAX_PEERS, || entries(&self.peers));
        let live = self.counter(counter::UNIX_ADDED);
        let unix_sockets = lru_evicted(before.unix_sockets, live, tracer_common::MAX_UNIX_SOCKETS, || entries(&self.unix));
        let now = LruEvictions { closed_sockets, upstream_endpoints, unix_sockets };
        self.evicted.set(now);
        now
    }

    fn counter(&self, index: u32) -> u64 {
        self.counters.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}

/// Entries a kernel map holds now (a walk of its keys).
fn entries<K: aya::Pod, V: aya::Pod>(map: &BpfHashMap<MapData, K, V>) -> usize {
    map.keys().filter(|k| k.is_ok()).count()
}

/// Evictions of an LRU map so far: entries that would be there without eviction (`live` =
/// added - removed) minus those that are. `present` walks the map, so it is called only when
/// `live` exceeds the capacity (before that, nothing can have been evicted). Never decreases.
fn lru_evicted(previous: u64, live: u64, capacity: u32, present: impl FnOnce() -> usize) -> u64 {
    if live <= u64::from(capacity) {
        return previous;
    }
    previous.max(live.saturating_sub(present() as u64))
}

/// Load a tracepoint program without attaching it (the on-demand hook).
fn load_only(ebpf: &mut Ebpf, spec: &ProgramSpec) -> Result<()> {
    let program = ebpf.program_mut(spec.program).ok_or_else(|| anyhow!("program {} missing from the object", spec.program))?;
    let tp: &mut TracePoint = program.try_into()?;
    tp.load().map_err(|e| anyhow!("load: {e}"))
}

fn attach(ebpf: &mut Ebpf, spec: &ProgramSpec, btf: &aya::Btf) -> Result<()> {
    let program = ebpf.program_mut(spec.program).ok_or_else(|| anyhow!("program {} missing from the object", spec.program))?;
    match spec.hook {
        Hook::Tracepoint(category, name) => {
            let tp: &mut TracePoint = program.try_into()?;
            tp.load().map_err(|e| anyhow!("load: {e}"))?;
            tp.attach(category, name).map_err(|e| anyhow!("attach {category}:{name}: {e}"))?;
        }
        Hook::TpBtf(name) => {
            let tp: &mut BtfTracePoint = program.try_into()?;
            tp.load(name, btf).map_err(|e| anyhow!("load: {e}"))?;
            tp.attach().map_err(|e| anyhow!("attach tp_btf/{name}: {e}"))?;
        }
    }
    Ok(())
}

/// The embedded eBPF object, unless it was built against other shared types than this binary
/// (a stale build): then one clear line instead of a confusing failure at load or, worse,
/// events decoded with the wrong layout.
fn probes_object() -> Result<&'static [u8]> {
    let expected = tracer_common::ABI_VERSION;
    match object_abi_version(PROBES_OBJECT) {
        Some(found) if found == expected => Ok(PROBES_OBJECT),
        found => {
            let found = found.map_or_else(|| "unknown".to_owned(), |v| v.to_string());
            bail!("eBPF object ABI version {found}, this binary expects {expected}: rebuild (cargo xtask build)")
        }
    }
}

/// The value of the object's `UPSTRACE_ABI_VERSION` symbol (a u32 the eBPF crate sets to
/// `tracer_common::ABI_VERSION`), read straight from the ELF64 little-endian file:
/// e_shoff/e_shentsize/e_shnum locate the section headers, the SHT_SYMTAB section and its
/// string table (sh_link) locate the symbol, and st_shndx/st_value its bytes.
fn object_abi_version(elf: &[u8]) -> Option<u32> {
    let bytes = |at: usize, n: usize| elf.get(at..at.checked_add(n)?);
    let u16_at = |at| Some(u16::from_le_bytes(bytes(at, 2)?.try_into().ok()?));
    let u32_at = |at| Some(u32::from_le_bytes(bytes(at, 4)?.try_into().ok()?));
    let usize_at = |at| usize::try_from(u64::from_le_bytes(bytes(at, 8)?.try_into().ok()?)).ok();
    if bytes(0, 6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (shoff, shentsize, shnum) = (usize_at(0x28)?, usize::from(u16_at(0x3a)?), usize::from(u16_at(0x3c)?));
    // (sh_type, sh_offset, sh_size, sh_link) of section `i`.
    let section = |i: usize| {
        let header = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((u32_at(header + 4)?, usize_at(header + 0x18)?, usize_at(header + 0x20)?, u32_at(header + 0x28)?))
    };
    const SHT_SYMTAB: u32 = 2;
    let (_, symtab, symtab_size, strtab) = (0..shnum).filter_map(section).find(|s| s.0 == SHT_SYMTAB)?;
    let (_, strtab, strtab_size, _) = section(strtab as usize)?;
    let names = bytes(strtab, strtab_size)?;
    (symtab..symtab.saturating_add(symtab_size)).step_by(24).find_map(|sym| {
        let name = names.get(u32_at(sym)? as usize..)?;
        if name.split(|&b| b == 0).next()? != b"UPSTRACE_ABI_VERSION" {
            return None;
        }
        let (_, data, _, _) = section(usize::from(u16_at(sym + 6)?))?;
        u32_at(data.checked_add(usize_at(sym + 8)?)?)
    })
}

/// Turn a permission failure into the one line a user needs.
fn map_load_error(e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        anyhow!(
            "the kernel refused to load eBPF programs (EPERM): run as root, or check kernel.unprivileged_bpf_disabled and lockdown ({text})"
        )
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::{PROBES_OBJECT, lru_evicted, object_abi_version};

    #[test]
    fn the_embedded_ebpf_object_carries_this_binarys_abi_version() {
        assert_eq!(object_abi_version(PROBES_OBJECT), Some(tracer_common::ABI_VERSION));
        assert_eq!(object_abi_version(b"not an ELF file"), None);
    }

    #[test]
    fn lru_evictions_are_derived_from_additions_and_the_map_walked_only_when_it_can_be_full() {
        let walked = std::cell::Cell::new(false);
        let walk = |n| {
            walked.set(true);
            n
        };
        assert_eq!(lru_evicted(0, 16_000, 16_384, || walk(16_000)), 0);
        assert!(!walked.get(), "no walk while the map cannot have filled");
        assert_eq!(lru_evicted(0, 20_000, 16_384, || walk(16_300)), 3_700);
        assert!(walked.get());
        // Entries removed since (a socket address reused) never make the count go down.
        assert_eq!(lru_evicted(3_700, 18_000, 16_384, || 16_384), 3_700);
    }
}
