//! Packet fates for traced flows: kernel drops (netfilter, neighbour/ARP failure, no route,
//! qdisc and tc drops, listen overflow) and ICMP errors received. Both hooks are hot, so they
//! return at once unless the packet touches an endpoint in `PEERS`.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{AF_INET, AF_INET6, Event, EventKind, PeerKey};

use crate::maps::{cfg_get, wants_drop_reason, PEERS, emit, read_kernel};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;

#[inline(always)]
fn is_peer(addr: &[u8; 16], port: u16) -> bool {
    let key = PeerKey { addr: *addr, port, _pad: [0; 6] };
    unsafe { PEERS.get(key) }.is_some()
}

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

#[inline(always)]
fn parse_ip(ip: u64, v6: bool) -> Option<Tuple> {
    let mut t = Tuple { family: AF_INET, proto: 0, saddr: [0; 16], daddr: [0; 16], sport: 0, dport: 0, l4: 0 };
    if v6 {
        t.family = AF_INET6;
        t.proto = read_kernel::<u8>(ip, 6)?;
        t.saddr = read_kernel::<[u8; 16]>(ip, 8)?;
        t.daddr = read_kernel::<[u8; 16]>(ip, 24)?;
        t.l4 = ip + 40;
    } else {
        let vihl = read_kernel::<u8>(ip, 0)?;
        if vihl >> 4 != 4 {
            return None;
        }
        t.proto = read_kernel::<u8>(ip, 9)?;
        let s: [u8; 4] = read_kernel(ip, 12)?;
        let d: [u8; 4] = read_kernel(ip, 16)?;
        t.saddr[..4].copy_from_slice(&s);
        t.daddr[..4].copy_from_slice(&d);
        t.l4 = ip + ((vihl & 0x0f) as u64) * 4;
    }
    if t.proto == IPPROTO_TCP {
        t.sport = u16::from_be(read_kernel::<u16>(t.l4, 0)?);
        t.dport = u16::from_be(read_kernel::<u16>(t.l4, 2)?);
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
    let Ok(reason) = (unsafe { ctx.read_at::<u32>(cfg_get!(tp.kfree_reason) as usize) }) else {
        return 0;
    };
    if !wants_drop_reason(reason) {
        return 0;
    }
    let (Ok(skb), Ok(proto)) = (unsafe {
        (ctx.read_at::<u64>(cfg_get!(tp.kfree_skbaddr) as usize), ctx.read_at::<u16>(cfg_get!(tp.kfree_protocol) as usize))
    }) else {
        return 0;
    };
    // The tracepoint already stores ntohs(skb->protocol).
    if proto != ETH_P_IP && proto != ETH_P_IPV6 {
        return 0;
    }
    let (Some(head), Some(nh)) = (read_kernel::<u64>(skb, cfg_get!(kernel.skb_head)), read_kernel::<u16>(skb, cfg_get!(kernel.skb_network_header)))
    else {
        return 0;
    };
    let Some(t) = parse_ip(head + nh as u64, proto == ETH_P_IPV6) else { return 0 };
    if t.proto != IPPROTO_TCP || !(is_peer(&t.daddr, t.dport) || is_peer(&t.saddr, t.sport)) {
        return 0;
    }
    emit(EventKind::Drop, |e| {
        fill_tuple(e, &t);
        e.value = reason as i64;
        e.netns = skb_netns(skb);
        e.aux = t.proto as u32;
    });
    0
}

#[tracepoint(category = "net", name = "netif_receive_skb")]
pub fn netif_receive_skb(ctx: TracePointContext) -> u32 {
    let Ok(skb) = (unsafe { ctx.read_at::<u64>(cfg_get!(tp.netif_skbaddr) as usize) }) else { return 0 };
    let Some(proto) = read_kernel::<u16>(skb, cfg_get!(kernel.skb_protocol)) else { return 0 };
    if u16::from_be(proto) != ETH_P_IP {
        return 0;
    }
    // At this point skb->data is the network header.
    let Some(data) = read_kernel::<u64>(skb, cfg_get!(kernel.skb_data)) else { return 0 };
    let Some(outer) = parse_ip(data, false) else { return 0 };
    if outer.proto != IPPROTO_ICMP {
        return 0;
    }
    let Some(icmp) = read_kernel::<[u8; 2]>(outer.l4, 0) else { return 0 };
    // Destination unreachable (3) and time exceeded (11) quote the offending packet.
    if icmp[0] != 3 && icmp[0] != 11 {
        return 0;
    }
    let Some(inner) = parse_ip(outer.l4 + 8, false) else { return 0 };
    if inner.proto != IPPROTO_TCP || !is_peer(&inner.daddr, inner.dport) {
        return 0;
    }
    emit(EventKind::IcmpError, |e| {
        fill_tuple(e, &inner);
        e.value = ((icmp[0] as i64) << 8) | icmp[1] as i64;
        e.netns = skb_netns(skb);
        e.aux = u32::from_le_bytes([outer.saddr[0], outer.saddr[1], outer.saddr[2], outer.saddr[3]]);
    });
    0
}
