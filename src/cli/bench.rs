//! `ebpfcni bench-datapath`: nanoseconds `from_pod` takes per packet, run
//! by the kernel on synthetic packets (BPF_PROG_TEST_RUN) in private
//! (unpinned) maps holding what `policy sync` makes of N NetworkPolicies
//! over 2N pods (named ports, ipBlocks and a 1-65535 range among them):
//! a packet of an established flow, and a new flow's policy decision.

use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use clap::Args;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::ProgramInput;
use serde_json::{json, Value};

use crate::datapath::bench::{maps_of, skb_ctx, DatapathSkelBuilder};
use crate::datapath::{EndpointEntry, MapSizes, PodEntry, ADDRESSES_PER_POD};
use crate::policy::PolicySet;

#[derive(Args)]
pub struct BenchArgs {
    /// NetworkPolicies to compile and load (2 pods each).
    #[arg(long, default_value_t = 1000)]
    policies: u32,
    /// Packets of the established flow.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// New flows (one packet each) to average the decision over.
    #[arg(long, default_value_t = 20_000)]
    new_flows: u32,
    /// Interface whose index the packet arrives on (any but lo; default:
    /// the first one).
    #[arg(long)]
    ifname: Option<String>,
}

fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a80_0000 + i + 2)
}

/// Policy i isolates server pod s<i> both ways: ingress from client c<i>,
/// egress to c<i>. Every tenth names its port, every seventh adds an
/// ipBlock, and the last (the measured flow's) opens 1-65535.
fn cluster(n: u32) -> Value {
    let mut items = Vec::new();
    for i in 0..n {
        let ns = format!("ns{}", i % 10);
        for (role, ip) in [("s", pod_ip(2 * i)), ("c", pod_ip(2 * i + 1))] {
            items.push(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{role}{i}"), "namespace": ns, "labels": {"app": format!("{role}{i}")}},
                "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8000 + i % 100}]}]},
                "status": {"podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}}));
        }
        let port = if i == n - 1 {
            json!({"port": 1, "endPort": 65535})
        } else if i % 10 == 0 {
            json!({"port": "http"})
        } else {
            json!({"port": 80 + i % 100})
        };
        let mut peers = vec![json!({"podSelector": {"matchLabels": {"app": format!("c{i}")}}})];
        if i % 7 == 0 {
            peers.push(json!({"ipBlock": {"cidr": format!("192.168.{}.0/24", i % 256), "except": [format!("192.168.{}.128/25", i % 256)]}}));
        }
        items.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": format!("p{i}"), "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"app": format!("s{i}")}}, "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": peers, "ports": [port]}], "egress": [{"to": peers, "ports": [port]}]}}));
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// An Ethernet + IPv4 + TCP SYN frame from `src`:`sport` to `dst`:`dport`.
fn frame(src: Ipv4Addr, dst: Ipv4Addr, src_mac: [u8; 6], sport: u16, dport: u16) -> Vec<u8> {
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
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    f
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let n = args.policies.max(1);
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
    let mut open = DatapathSkelBuilder::default().open(&mut object).context("open BPF skeleton")?;
    // The default config's sizes, with room for the 2N pods.
    let defaults = MapSizes::default();
    let pods = (2 * n + 1).div_ceil(ADDRESSES_PER_POD).max(defaults.max_pods);
    MapSizes { max_pods: pods, ..defaults }.apply(open.open_object_mut())?;
    let skel = open.load().context("load BPF program")?;
    let maps = maps_of(&skel)?;
    let mac = [2, 0, 0, 0, 0, 1];

    let compiled = crate::policy::k8s::compile(&cluster(n), &PolicySet::default(), &[])?;
    anyhow::ensure!(compiled.errors.is_empty(), "benchmark policies: {:?}", compiled.errors);
    for i in 0..2 * n {
        let ip = IpAddr::V4(pod_ip(i));
        maps.put_endpoint(&EndpointEntry { ip, ifindex: 1000 + i, mac: [2, 0, 0, 0, 1, i as u8], flags: 0 })?;
    }
    // The measured pod is the last server; its flows go to its client.
    let (src, dst) = (pod_ip(2 * (n - 1)), pod_ip(2 * (n - 1) + 1));
    maps.put_endpoint(&EndpointEntry { ip: IpAddr::V4(src), ifindex, mac, flags: 0 })?;
    maps.put_pod(&PodEntry { ifindex, addr: IpAddr::V4(src), mac })?;
    crate::policy::apply(&maps, &compiled.set)?;

    let mut ctx = skb_ctx(ifindex);
    let mut run = |data: &[u8], repeat: u32| -> Result<(u128, i32)> {
        let input =
            ProgramInput { data_in: Some(data), context_in: Some(ctx.as_mut_slice()), repeat, ..Default::default() };
        let out = skel.progs.from_pod.test_run(input).context("BPF_PROG_TEST_RUN")?;
        Ok((out.duration.as_nanos(), out.return_value as i32))
    };
    // Established: the first packet makes the connection entry.
    let (established, verdict) = run(&frame(src, dst, mac, 40000, 40000), args.repeat)?;
    // New flows: one packet each, a new source port every time.
    let mut total = 0u128;
    for k in 0..args.new_flows {
        // One pod may open only so many flows at a time: each measured
        // flow starts from a fresh budget (outside the timed run).
        maps.remove_pod(ifindex)?;
        maps.put_pod(&PodEntry { ifindex, addr: IpAddr::V4(src), mac })?;
        let (ns, v) = run(&frame(src, dst, mac, 1024 + (k % 60000) as u16, 40001 + (k / 60000) as u16), 1)?;
        anyhow::ensure!(v == verdict, "a new flow got verdict {v}");
        total += ns;
    }
    let new_flow = total / u128::from(args.new_flows.max(1));
    // The same way (one packet a run), a packet of the established flow:
    // what a run costs besides the policy decision and the new entry.
    let mut total = 0u128;
    for _ in 0..args.new_flows {
        total += run(&frame(src, dst, mac, 40000, 40000), 1)?.0;
    }
    let established_single = total / u128::from(args.new_flows.max(1));
    println!(
        "{{\"policies\": {n}, \"pods\": {}, \"entries\": {}, \"established_ns_per_packet\": {established}, \"new_flow_ns\": {new_flow}, \"established_single_run_ns\": {established_single}, \"verdict\": {verdict}}}",
        2 * n,
        compiled.set.entries.len()
    );
    Ok(())
}
