//! Packet fates for traced flows: kernel drops (netfilter, neighbour/ARP failure, no route,
//! qdisc and tc drops, listen overflow) and ICMP errors received. Both hooks are hot, so they
//! return at once unless the packet touches an endpoint in `PEERS`.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{AF_INET, AF_INET6, Event, EventKind};

use crate::{
    config::{cfg_get, wants_drop_reason},
    done,
    event::{Who, emit},
    maps::is_peer,
    read::{read_kernel, tp_field},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_ICMP: u8 = 1;
pub use tracer_common::IPPROTO_TCP;
/// The ICMP errors that quote the offending packet's headers.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// Parsed addressing of an IP packet carrying TCP.
struct Tuple {
    family: u8,
    proto: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    /// Start of the transport header.
    l4: u64,
}

/// One read per header (each `bpf_probe_read_kernel` costs far more than the bytes it copies).
#[inline(always)]
fn parse_ip(ip: u64, v6: bool) -> Option<Tuple> {
    let t = if v6 {
        let h = read_kernel::<[u8; 40]>(ip, 0)?;
        let mut t = Tuple { family: AF_INET6, proto: h[6], saddr: [0; 16], daddr: [0; 16], sport: 0, dport: 0, l4: ip + 40 };
        t.saddr.copy_from_slice(&h[8..24]);
        t.daddr.copy_from_slice(&h[24..40]);
        t
    } else {
        ipv4_tuple(ip, &read_kernel::<[u8; 20]>(ip, 0)?)?
    };
    with_ports(t)
}

#[inline(always)]
fn ipv4_tuple(ip: u64, h: &[u8; 20]) -> Option<Tuple> {
    if h[0] >> 4 != 4 {
        return None;
    }
    let mut t = Tuple { family: AF_INET, proto: h[9], saddr: [0; 16], daddr: [0; 16], sport: 0, dport: 0, l4: 0 };
    t.saddr[..4].copy_from_slice(&h[12..16]);
    t.daddr[..4].copy_from_slice(&h[16..20]);
    t.l4 = ip + ((h[0] & 0x0f) as u64) * 4;
    Some(t)
}

#[inline(always)]
fn with_ports(mut t: Tuple) -> Option<Tuple> {
    if t.proto == IPPROTO_TCP {
        let ports = read_kernel::<[u8; 4]>(t.l4, 0)?;
        t.sport = u16::from_be_bytes([ports[0], ports[1]]);
        t.dport = u16::from_be_bytes([ports[2], ports[3]]);
    }
    Some(t)
}

#[inline(always)]
fn skb_netns(skb: u64) -> u32 {
    let Some(dev) = read_kernel::<u64>(skb, cfg_get!(kernel.skb_dev)) else { return 0 };
    if dev == 0 {
        return 0;
    }
    match read_kernel::<u64>(dev, cfg_get!(kernel.dev_nd_net)) {
        Some(net) if net != 0 => read_kernel::<u32>(net, cfg_get!(kernel.net_ns_inum)).unwrap_or(0),
        _ => 0,
    }
}

#[inline(always)]
fn fill_tuple(e: &mut Event, t: &Tuple) {
    e.family = t.family;
    e.saddr = t.saddr;
    e.daddr = t.daddr;
    e.sport = t.sport;
    e.dport = t.dport;
}

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    done(try_kfree_skb(&ctx))
}

fn try_kfree_skb(ctx: &TracePointContext) -> Result<(), i32> {
    let reason: u32 = tp_field(ctx, cfg_get!(tp.kfree_reason))?;
    if !wants_drop_reason(reason) {
        return Ok(());
    }
    let skb: u64 = tp_field(ctx, cfg_get!(tp.kfree_skbaddr))?;
    let proto: u16 = tp_field(ctx, cfg_get!(tp.kfree_protocol))?;
    // The tracepoint already stores ntohs(skb->protocol).
    if proto != ETH_P_IP && proto != ETH_P_IPV6 {
        return Ok(());
    }
    let (Some(head), Some(nh)) =
        (read_kernel::<u64>(skb, cfg_get!(kernel.skb_head)), read_kernel::<u16>(skb, cfg_get!(kernel.skb_network_header)))
    else {
        return Ok(());
    };
    let Some(t) = parse_ip(head + nh as u64, proto == ETH_P_IPV6) else { return Ok(()) };
    if t.proto != IPPROTO_TCP || !(is_peer(&t.daddr, t.dport) || is_peer(&t.saddr, t.sport)) {
        return Ok(());
    }
    emit(EventKind::Drop, Who::Nobody, |e| {
        fill_tuple(e, &t);
        e.value = reason as i64;
        e.netns = skb_netns(skb);
        e.aux = t.proto as u32;
    });
    Ok(())
}

#[tracepoint(category = "net", name = "netif_receive_skb")]
pub fn netif_receive_skb(ctx: TracePointContext) -> u32 {
    done(try_netif_receive_skb(&ctx))
}

fn try_netif_receive_skb(ctx: &TracePointContext) -> Result<(), i32> {
    let skb: u64 = tp_field(ctx, cfg_get!(tp.netif_skbaddr))?;
    // At this point skb->data is the network header. Every packet on the host comes here:
    // one read of the IP header decides, and only ICMP goes further.
    let Some(data) = read_kernel::<u64>(skb, cfg_get!(kernel.skb_data)) else { return Ok(()) };
    // (The version nibble stands in for skb->protocol: one read fewer per packet.)
    let Some(header) = read_kernel::<[u8; 20]>(data, 0) else { return Ok(()) };
    if header[0] >> 4 != 4 || header[9] != IPPROTO_ICMP {
        return Ok(());
    }
    let Some(outer) = ipv4_tuple(data, &header) else { return Ok(()) };
    let Some(icmp) = read_kernel::<[u8; 2]>(outer.l4, 0) else { return Ok(()) };
    if icmp[0] != ICMP_DEST_UNREACH && icmp[0] != ICMP_TIME_EXCEEDED {
        return Ok(());
    }
    let Some(inner) = parse_ip(outer.l4 + 8, false) else { return Ok(()) };
    if inner.proto != IPPROTO_TCP || !is_peer(&inner.daddr, inner.dport) {
        return Ok(());
    }
    emit(EventKind::IcmpError, Who::Nobody, |e| {
        fill_tuple(e, &inner);
        e.value = ((icmp[0] as i64) << 8) | icmp[1] as i64;
        e.netns = skb_netns(skb);
        e.aux = u32::from_le_bytes([outer.saddr[0], outer.saddr[1], outer.saddr[2], outer.saddr[3]]);
    });
    Ok(())
}
