//! `ebpfcni bench-datapath`: nanoseconds per packet of `from_pod`, run by
//! the kernel on a synthetic packet (BPF_PROG_TEST_RUN), with N endpoints,
//! N pod identities and N rules in private (unpinned) maps, under default
//! deny with the packet's flow allowed by one of the N rules.

use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use clap::Args;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::ProgramInput;

use crate::datapath::bench::{maps_of, skb_ctx, DatapathSkelBuilder};
use crate::datapath::{Direction, EndpointEntry, PodEntry, IDENTITY_POD_MIN};
use crate::ipam::Cidr;
use crate::policy::{Entry, PolicySet};

#[derive(Args)]
pub struct BenchArgs {
    /// Endpoints, identities and rules to load.
    #[arg(long, default_value_t = 1000)]
    entries: u32,
    /// Packets per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Interface whose index the packet arrives on (any but lo; default:
    /// the first one).
    #[arg(long)]
    ifname: Option<String>,
}

fn pod_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + i + 2))
}

/// An Ethernet + IPv4 + TCP SYN frame from `src` to `dst`:80.
fn frame(src: Ipv4Addr, dst: Ipv4Addr, src_mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    f
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let n = args.entries.max(2);
    // The kernel resolves the context's ifindex to a device, and refuses lo.
    let ifindex = match &args.ifname {
        Some(name) => nix::net::if_::if_nametoindex(name.as_str()).with_context(|| format!("no interface {name}"))?,
        None => nix::net::if_::if_nameindex()
            .context("list interfaces")?
            .iter()
            .map(|i| i.index())
            .find(|i| *i > 1)
            .context("no interface besides lo")?,
    };
    let mut object = MaybeUninit::uninit();
    let open = DatapathSkelBuilder::default().open(&mut object).context("open BPF skeleton")?;
    let skel = open.load().context("load BPF program")?;
    let maps = maps_of(&skel)?;
    let mac = [2, 0, 0, 0, 0, 1];

    // N pods, each its own identity; N rules (pod i may reach pod i+1 on
    // tcp/80); default deny. The measured packet's flow is the last rule.
    let mut set = PolicySet::default();
    for i in 0..n {
        let ip = pod_ip(i);
        maps.put_endpoint(&EndpointEntry { ip, ifindex: 1000 + i, mac: [2, 0, 0, 0, 1, i as u8], flags: 0 })?;
        set.ipcache.insert(Cidr { addr: ip, prefix: 32 }, IDENTITY_POD_MIN + i);
    }
    for i in 0..n - 1 {
        let (s, d) = (IDENTITY_POD_MIN + i, IDENTITY_POD_MIN + i + 1);
        let e = Entry { dir: Direction::Egress, subject: s, peer: d, proto: 6, port: 80, deny: false, rule: i + 1 };
        set.entries.insert(e);
        set.entries.insert(Entry { dir: Direction::Ingress, subject: d, peer: s, ..e });
    }
    maps.put_endpoint(&EndpointEntry { ip: pod_ip(n - 2), ifindex, mac, flags: 0 })?;
    maps.put_pod(&PodEntry { ifindex, addr: pod_ip(n - 2), mac })?;
    crate::policy::set_default_deny(&maps, true)?;
    crate::policy::apply(&maps, &set)?;

    let (IpAddr::V4(src), IpAddr::V4(dst)) = (pod_ip(n - 2), pod_ip(n - 1)) else { unreachable!() };
    let data = frame(src, dst, mac);
    let mut ctx = skb_ctx(ifindex);
    let input = ProgramInput {
        data_in: Some(&data),
        context_in: Some(ctx.as_mut_slice()),
        repeat: args.repeat,
        ..Default::default()
    };
    let out = skel.progs.from_pod.test_run(input).context("BPF_PROG_TEST_RUN")?;
    println!("{{\"entries\": {n}, \"ns_per_packet\": {}, \"verdict\": {}}}", out.duration.as_nanos(), out.return_value);
    Ok(())
}
