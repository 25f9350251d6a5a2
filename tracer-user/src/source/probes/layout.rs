//! Offsets the eBPF programs need, read from the running kernel: tracepoint field offsets from
//! tracefs `format` files and struct member offsets from BTF. Nothing here is hardcoded.
use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result, anyhow, ensure};
use tracer_common::{KernelLayout, TracepointLayout};

use super::btf::Btf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u16,
    pub size: u16,
}

/// Parse a tracefs `format` file into field name -> (offset, size).
pub fn parse_format(text: &str) -> Result<HashMap<String, Field>> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else { continue };
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.trim().parse::<u16>().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.trim().parse::<u16>().ok();
            } else if decl.is_none() && !part.is_empty() && !part.contains(':') {
                decl = Some(part);
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
            return Err(anyhow!("malformed tracepoint format line: {line}"));
        };
        let name = decl.split_whitespace().last().unwrap_or_default();
        let name = name.split('[').next().unwrap_or_default().trim_start_matches('*');
        ensure!(!name.is_empty(), "no field name in: {line}");
        fields.insert(name.to_owned(), Field { offset, size });
    }
    Ok(fields)
}

pub struct Tracefs {
    root: std::path::PathBuf,
}

impl Tracefs {
    /// Find tracefs, mounting it if the machine has not (fresh machines often have not).
    pub fn open() -> Result<Self> {
        for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
            if Path::new(root).join("events").is_dir() {
                return Ok(Self { root: root.into() });
            }
        }
        let status = std::process::Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]).status();
        ensure!(
            matches!(status, Ok(s) if s.success()) && Path::new("/sys/kernel/tracing/events").is_dir(),
            "tracefs is not mounted and could not be mounted at /sys/kernel/tracing"
        );
        Ok(Self { root: "/sys/kernel/tracing".into() })
    }

    pub fn fields(&self, category: &str, name: &str) -> Result<HashMap<String, Field>> {
        let path = self.root.join("events").join(category).join(name).join("format");
        let text = std::fs::read_to_string(&path).with_context(|| format!("tracepoint {category}:{name} missing ({})", path.display()))?;
        parse_format(&text).with_context(|| format!("tracepoint {category}:{name}"))
    }

    pub fn exists(&self, category: &str, name: &str) -> bool {
        self.root.join("events").join(category).join(name).join("format").exists()
    }
}

fn field(fields: &HashMap<String, Field>, tp: &str, name: &str, size: u16) -> Result<u16> {
    let f = fields.get(name).ok_or_else(|| anyhow!("tracepoint {tp} has no field {name}"))?;
    ensure!(f.size == size, "tracepoint {tp} field {name} is {} bytes, expected {size}", f.size);
    Ok(f.offset)
}

pub fn tracepoint_layout(fs: &Tracefs) -> Result<TracepointLayout> {
    let set_state = fs.fields("sock", "inet_sock_set_state")?;
    let t = "sock:inet_sock_set_state";
    let recv_reset = fs.fields("tcp", "tcp_receive_reset")?;
    let send_reset = fs.fields("tcp", "tcp_send_reset")?;
    let retransmit = fs.fields("tcp", "tcp_retransmit_skb")?;
    let send_len = fs.fields("sock", "sock_send_length")?;
    let recv_len = fs.fields("sock", "sock_recv_length")?;
    let fork = fs.fields("sched", "sched_process_fork")?;
    let exit = fs.fields("sched", "sched_process_exit")?;
    let signal = fs.fields("signal", "signal_generate")?;
    let kfree = fs.fields("skb", "kfree_skb")?;
    let netif = fs.fields("net", "netif_receive_skb")?;
    Ok(TracepointLayout {
        set_state_skaddr: field(&set_state, t, "skaddr", 8)?,
        set_state_oldstate: field(&set_state, t, "oldstate", 4)?,
        set_state_newstate: field(&set_state, t, "newstate", 4)?,
        set_state_sport: field(&set_state, t, "sport", 2)?,
        set_state_dport: field(&set_state, t, "dport", 2)?,
        set_state_family: field(&set_state, t, "family", 2)?,
        set_state_protocol: field(&set_state, t, "protocol", 2)?,
        set_state_saddr: field(&set_state, t, "saddr", 4)?,
        set_state_daddr: field(&set_state, t, "daddr", 4)?,
        set_state_saddr_v6: field(&set_state, t, "saddr_v6", 16)?,
        set_state_daddr_v6: field(&set_state, t, "daddr_v6", 16)?,
        recv_reset_skaddr: field(&recv_reset, "tcp:tcp_receive_reset", "skaddr", 8)?,
        send_reset_skaddr: field(&send_reset, "tcp:tcp_send_reset", "skaddr", 8)?,
        send_reset_state: field(&send_reset, "tcp:tcp_send_reset", "state", 4)?,
        retransmit_skaddr: field(&retransmit, "tcp:tcp_retransmit_skb", "skaddr", 8)?,
        retransmit_state: field(&retransmit, "tcp:tcp_retransmit_skb", "state", 4)?,
        send_len_sk: field(&send_len, "sock:sock_send_length", "sk", 8)?,
        send_len_ret: field(&send_len, "sock:sock_send_length", "ret", 4)?,
        recv_len_sk: field(&recv_len, "sock:sock_recv_length", "sk", 8)?,
        recv_len_ret: field(&recv_len, "sock:sock_recv_length", "ret", 4)?,
        fork_parent_pid: field(&fork, "sched:sched_process_fork", "parent_pid", 4)?,
        fork_child_pid: field(&fork, "sched:sched_process_fork", "child_pid", 4)?,
        exit_pid: field(&exit, "sched:sched_process_exit", "pid", 4)?,
        exit_group_dead: field(&exit, "sched:sched_process_exit", "group_dead", 1)?,
        signal_sig: field(&signal, "signal:signal_generate", "sig", 4)?,
        signal_pid: field(&signal, "signal:signal_generate", "pid", 4)?,
        signal_comm: field(&signal, "signal:signal_generate", "comm", 16)?,
        signal_result: field(&signal, "signal:signal_generate", "result", 4)?,
        send_len_family: field(&send_len, "sock:sock_send_length", "family", 2)?,
        recv_len_family: field(&recv_len, "sock:sock_recv_length", "family", 2)?,
        kfree_skbaddr: field(&kfree, "skb:kfree_skb", "skbaddr", 8)?,
        kfree_protocol: field(&kfree, "skb:kfree_skb", "protocol", 2)?,
        kfree_reason: field(&kfree, "skb:kfree_skb", "reason", 4)?,
        netif_skbaddr: field(&netif, "net:netif_receive_skb", "skbaddr", 8)?,
        send_len_protocol: field(&send_len, "sock:sock_send_length", "protocol", 2)?,
        recv_len_protocol: field(&recv_len, "sock:sock_recv_length", "protocol", 2)?,
        _pad: [0; 2],
    })
}

fn offset16(btf: &Btf, st: &str, path: &[&str]) -> Result<u16> {
    let off = btf.member_offset(st, path)?;
    u16::try_from(off).map_err(|_| anyhow!("{st}.{} offset {off} too large", path.join(".")))
}

pub fn kernel_layout(btf: &Btf) -> Result<KernelLayout> {
    let sc = |m: &str| offset16(btf, "sock", &["__sk_common", m]);
    Ok(KernelLayout {
        skc_daddr: sc("skc_daddr")?,
        skc_rcv_saddr: sc("skc_rcv_saddr")?,
        skc_dport: sc("skc_dport")?,
        skc_num: sc("skc_num")?,
        skc_family: sc("skc_family")?,
        skc_v6_daddr: sc("skc_v6_daddr")?,
        skc_v6_rcv_saddr: sc("skc_v6_rcv_saddr")?,
        skc_net: offset16(btf, "sock", &["__sk_common", "skc_net", "net"])?,
        net_ns_inum: offset16(btf, "net", &["ns", "inum"])?,
        sk_err: offset16(btf, "sock", &["sk_err"])?,
        task_exit_code: offset16(btf, "task_struct", &["exit_code"])?,
        skb_head: offset16(btf, "sk_buff", &["head"])?,
        skb_data: offset16(btf, "sk_buff", &["data"])?,
        skb_network_header: offset16(btf, "sk_buff", &["network_header"])?,
        skb_protocol: offset16(btf, "sk_buff", &["protocol"])?,
        skb_dev: offset16(btf, "sk_buff", &["dev"])?,
        dev_nd_net: offset16(btf, "net_device", &["nd_net", "net"])?,
        task_files: offset16(btf, "task_struct", &["files"])?,
        files_fdt: offset16(btf, "files_struct", &["fdt"])?,
        fdtable_max_fds: offset16(btf, "fdtable", &["max_fds"])?,
        fdtable_fd: offset16(btf, "fdtable", &["fd"])?,
        file_private_data: offset16(btf, "file", &["private_data"])?,
        socket_sk: offset16(btf, "socket", &["sk"])?,
        socket_type: offset16(btf, "socket", &["type"])?,
        sk_socket: offset16(btf, "sock", &["sk_socket"])?,
        socket_alloc_inode: offset16(btf, "socket_alloc", &["vfs_inode"])?,
        inode_ino: offset16(btf, "inode", &["i_ino"])?,
        sk_protocol: offset16(btf, "sock", &["sk_protocol"]).unwrap_or(0),
    })
}

/// Drop reasons upstrace reports (names of enum skb_drop_reason without the prefix). The
/// numbers differ between kernels, so they are resolved by name from BTF at start.
pub const WATCHED_DROP_REASONS: &[&str] = &[
    "NETFILTER_DROP",
    "NEIGH_FAILED",
    "NEIGH_QUEUEFULL",
    "NEIGH_DEAD",
    "NEIGH_CREATEFAIL",
    "IP_OUTNOROUTES",
    "IP_INNOROUTES",
    "IP_RPFILTER",
    // Not NO_SOCKET: a SYN to a closed port is answered by an RST, which already says
    // "nothing listening"; watching it too would double the events of a refusal storm.
    "TCP_LISTEN_OVERFLOW",
    "QDISC_DROP",
    "QDISC_OVERLIMIT",
    "QDISC_CONGESTED",
    "TC_EGRESS",
    "TC_INGRESS",
    "TC_DROP",
    "TC_CHAIN_NOTFOUND",
    "FULL_RING",
    "CPU_BACKLOG",
    "DEV_READY",
    "XFRM_POLICY",
];

/// Every drop reason number -> short name, for decoding, and the bitmap of watched ones.
pub fn drop_reasons(btf: &Btf) -> (std::collections::HashMap<u32, String>, [u64; 8]) {
    let mut names = std::collections::HashMap::new();
    let mut mask = [0u64; 8];
    for (name, value) in btf.enum_values("skb_drop_reason") {
        let short = name.strip_prefix("SKB_DROP_REASON_").unwrap_or(&name).to_owned();
        let Ok(v) = u32::try_from(value) else { continue };
        if WATCHED_DROP_REASONS.contains(&short.as_str()) && v < tracer_common::MAX_DROP_REASON {
            mask[(v / 64) as usize] |= 1 << (v % 64);
        }
        names.insert(v, short);
    }
    (names, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "name: inet_sock_set_state\nID: 1\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\
\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
\nprint fmt: \"x\"\n";

    #[test]
    fn parses_tracefs_format() {
        let f = parse_format(SAMPLE).unwrap();
        assert_eq!(f["skaddr"], Field { offset: 8, size: 8 });
        assert_eq!(f["saddr_v6"], Field { offset: 40, size: 16 });
        assert_eq!(f["parent_comm"], Field { offset: 8, size: 4 });
        assert!(field(&f, "t", "skaddr", 4).is_err(), "size mismatch must be refused");
        assert!(field(&f, "t", "nope", 8).is_err());
    }

    #[test]
    fn malformed_format_is_an_error_not_a_panic() {
        assert!(parse_format("\tfield:int x;\toffset:zz;\tsize:4;").is_err());
        assert!(parse_format("field:").is_err());
        assert!(parse_format("").unwrap().is_empty());
    }
}
