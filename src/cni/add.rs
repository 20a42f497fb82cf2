//! ADD: address, wiring, datapath — each step undone if a later one fails.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, bail, Context, Result};

use super::config::NetConf;
use super::env::CniEnv;
use super::error::{CniError, INVALID_CONFIG, INVALID_ENV, TRY_AGAIN_LATER};
use super::host_veth_name;
use super::result::{ip_config, mac_string, AddResult, Interface, RouteJson};
use super::undo::Undo;
use crate::datapath::{self, Attached, Datapath, EndpointEntry, PodEntry};
use crate::ipam::{self, Allocation, AttachmentRecord, Cidr, DiskStore, LeaseStore};
use crate::netlink::{Link, Netlink, Netns};
use crate::policy;

pub fn add(conf: &NetConf, env: &CniEnv) -> Result<AddResult> {
    super::status::require_agent(conf)?;
    let netns_path = env.netns.as_deref().expect("ADD requires CNI_NETNS");
    let ns = Netns::open(netns_path).map_err(|e| CniError::error(INVALID_ENV, format!("CNI_NETNS: {e:#}")))?;
    if ns.is_own()? {
        bail!(CniError::error(
            INVALID_ENV,
            format!(
                "CNI_NETNS {} is the plugin's own network namespace (the node's), not a pod's",
                netns_path.display()
            )
        ));
    }
    // Held to the end: a concurrent ADD or DEL of this attachment waits.
    let _attachment = super::attach_lock::lock(&conf.data_dir, &conf.name, &env.container_id, &env.ifname)?;
    let dp = super::repair::load(conf)?;
    let host = Netlink::connect()?;
    let host_if = host_veth_name(&env.container_id, &env.ifname);
    std::thread::scope(|scope| add_in_scope(scope, conf, env, &ns, &dp, &host, &host_if))
}

/// The steps of ADD. Attaching with TCX waits for an RCU grace period in
/// the kernel (most of an ADD's time), so it runs on a helper thread as
/// soon as the veth exists, while addresses, bridge and pod are set up.
/// The host end only comes up after the attach has finished: no packet
/// ever flows unseen by the program.
fn add_in_scope<'s, 'e>(
    scope: &'s std::thread::Scope<'s, 'e>,
    conf: &'e NetConf,
    env: &'e CniEnv,
    ns: &'e Netns,
    dp: &'e Datapath,
    host: &'e Netlink,
    host_if: &'e str,
) -> Result<AddResult> {
    let attaching = RefCell::new(None);
    // Declared after what its steps borrow, so it is dropped first.
    let mut undo = Undo::default();

    // A retried ADD finds its veth pair in place and converges on it; a
    // host veth whose peer is not this pod's interface is a leftover of a
    // crashed ADD and is replaced.
    let pod = Netlink::connect_in(ns)?;
    let mut host_link = host.link_by_name(host_if)?;
    if let Some(h) = &host_link {
        let pod_side = pod.link_by_name(&env.ifname)?;
        if pod_side.is_none_or(|p| p.peer != Some(h.index)) {
            // Its entries name an ifindex that is about to disappear; its
            // link-local address (of the old MAC) goes with it.
            if let Some(old) = dp.maps.pod(h.index)? {
                let ll = super::link_local::of_mac(old.mac);
                dp.maps.remove_endpoint(ll)?;
                dp.maps.remove_stats(ll)?;
                let _lock = datapath::lock_dir(&dp.dir)?;
                policy::unregister_pod(&dp.maps, &[ll])?;
            }
            dp.maps.remove_pod(h.index)?;
            // The veth first, then its (defunct) links: never a live veth
            // without its programs.
            host.delete_link(host_if)?;
            datapath::detach(&dp.dir, host_if)?;
            host_link = None;
        }
    }
    // What an earlier ADD of this attachment made is not this one's to
    // undo: only a veth created here takes its attachment and entries
    // with it when this ADD fails.
    let fresh = host_link.is_none();
    let host_link = match host_link {
        Some(link) => link,
        None => {
            // A retired veth of another pod of this namespace goes in a moment.
            let taken = match pod.link_by_name(&env.ifname)? {
                Some(l) => !super::teardown::wait_for_retired(&pod, &dp.dir, &env.ifname, &l)?,
                None => false,
            };
            if taken {
                bail!(CniError::error(
                    INVALID_ENV,
                    format!(
                        "CNI_IFNAME: interface {} already exists in {} and is not this network's: choose another name",
                        env.ifname,
                        ns.path().display()
                    )
                ));
            }
            let mac = env.requested_mac.or(conf.requested_mac);
            if let Some(mac) = mac {
                refuse_mac_in_use(dp, mac, env.requested_mac.is_some())?;
            }
            host.create_veth(host_if, &env.ifname, ns.raw_fd(), conf.mtu, mac, super::veth_group(&conf.name))?;
            undo.push(format!("delete veth {host_if}"), || host.delete_link(host_if).map(drop));
            host.link_by_name(host_if)?.ok_or_else(|| anyhow!("veth {host_if} vanished"))?
        }
    };

    let ifindex = host_link.index;
    *attaching.borrow_mut() = Some(scope.spawn(move || dp.attach(host_if, ifindex, conf.attach_mode)));
    let pending_attach = &attaching;
    undo.push(format!("detach from {host_if}"), move || {
        if let Some(pending) = pending_attach.borrow_mut().take() {
            let _ = pending.join();
        }
        if fresh {
            datapath::detach(&dp.dir, host_if)?;
        }
        Ok(())
    });

    let (allocs, held) = {
        let mut store = DiskStore::open(&conf.data_dir, &conf.name)?;
        // After a reboot no pod of the leases is left: their addresses are free.
        let alive = |l: &ipam::Lease| {
            l.is_for(&env.container_id, &env.ifname)
                || host.link_by_name(&host_veth_name(&l.container_id, &l.ifname)).map_or(true, |v| v.is_some())
        };
        for l in store.reclaim_earlier_boot(&alive)? {
            eprintln!("ebpfcni: released {} of {} (leased before this boot)", l.ip, l.container_id);
            ipam::attachments::remove(&conf.data_dir, &conf.name, &host_veth_name(&l.container_id, &l.ifname))?;
        }
        let requested: Vec<IpAddr> = conf.requested_ips.iter().chain(&env.requested_ips).copied().collect();
        one_request_per_set(conf, &requested)?;
        let held: Vec<IpAddr> = store.leases_of(&env.container_id, &env.ifname)?.iter().map(|l| l.ip).collect();
        (ipam::allocate(&mut store, &conf.rangesets, &env.container_id, &env.ifname, &requested)?, held)
    };
    let leased_now: Vec<IpAddr> = allocs.iter().map(|a| a.address.addr).filter(|ip| !held.contains(ip)).collect();
    undo.push("release addresses", move || {
        let mut store = DiskStore::open(&conf.data_dir, &conf.name)?;
        leased_now.iter().try_for_each(|ip| store.release(*ip))
    });

    let bridge = ensure_bridge(host, conf, &allocs)?;
    crate::node::ensure(conf)?;
    host.set_master(host_link.index, bridge.index)?;
    if conf.hairpin_mode {
        host.set_hairpin(host_link.index, true)?;
    }
    for dev in [conf.bridge.as_str(), host_if] {
        crate::node::sysctl::refuse_router_advertisements(dev)?;
    }

    let netns_path = ns.path();
    let pod_link = pod
        .link_by_name(&env.ifname)?
        .ok_or_else(|| anyhow!("{} vanished from {}", env.ifname, netns_path.display()))?;
    super::link_local::make_predictable(ns, &env.ifname)?;
    let routes = configure_pod(&pod, &pod_link, conf, &allocs)
        .with_context(|| format!("configure {} in {}", env.ifname, netns_path.display()))?;

    let pending = attaching.borrow_mut().take().expect("attach started above");
    let attached = pending.join().map_err(|_| anyhow!("attach thread panicked"))??;
    let flags = match attached {
        Attached::Tcx => datapath::ENDPOINT_F_TCX,
        Attached::Tc => datapath::ENDPOINT_F_TC,
    };
    let pod_mac = pod_link.mac.ok_or_else(|| anyhow!("{} has no MAC address", env.ifname))?;
    // Its leased addresses and its link-local one.
    let mut ips: Vec<IpAddr> = allocs.iter().map(|a| a.address.addr).collect();
    ips.push(super::link_local::of_mac(pod_mac));
    for &ip in &ips {
        if fresh {
            undo.push(format!("remove endpoint {ip}"), move || dp.maps.remove_endpoint(ip));
        }
        dp.maps
            .put_endpoint(&EndpointEntry { ip, ifindex: host_link.index, mac: pod_mac, flags })
            .map_err(|e| no_room(conf, e))?;
    }
    // The pod's identity for policy and its entry for anti-spoofing: both
    // in place before the first packet can flow.
    let maps = &dp.maps;
    {
        let _lock = datapath::lock_dir(&dp.dir)?;
        policy::set_default_deny(maps, conf.default_deny)?;
        let owned = ips.clone();
        if fresh {
            undo.push("unregister pod from policy", move || {
                let _lock = datapath::lock_dir(&dp.dir)?;
                policy::unregister_pod(maps, &owned)
            });
        }
        policy::register_pod(maps, &ips, host_link.index).map_err(|e| no_room(conf, e))?;
    }
    let ifindex = host_link.index;
    if fresh {
        undo.push("remove pod entry", move || maps.remove_pod(ifindex));
    }
    maps.put_pod(&PodEntry { ifindex, addr: allocs[0].address.addr, mac: pod_mac }).map_err(|e| no_room(conf, e))?;
    // The truth the maps are rebuilt from when they are lost.
    let record = AttachmentRecord {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        host_veth: host_if.to_string(),
        mac: ipam::format_mac(pod_mac),
        ips: allocs.iter().map(|a| a.address.addr).collect(),
    };
    ipam::attachments::save(&conf.data_dir, &conf.name, &record)?;
    if fresh {
        undo.push("remove attachment record", move || ipam::attachments::remove(&conf.data_dir, &conf.name, host_if));
    }
    host.set_up(host_link.index)?;
    undo.commit();

    Ok(build_result(conf, &bridge, &host_link, &pod_link, netns_path.display().to_string(), &allocs, routes))
}

/// A map too full for the pod refuses it (code 11: kubelet retries),
/// saying which map and what to raise in the message runtimes show.
fn no_room(conf: &NetConf, e: anyhow::Error) -> anyhow::Error {
    match e.chain().find_map(|c| c.downcast_ref::<datapath::MapFull>()) {
        Some(full) => {
            CniError::error(TRY_AGAIN_LATER, format!("network {} has no room for another pod: {full}", conf.name))
        }
        None => e,
    }
}

/// A requested MAC another pod of the network already has would let this
/// pod pass anti-spoofing as that one and steal its frames on the bridge.
fn refuse_mac_in_use(dp: &Datapath, mac: [u8; 6], from_env: bool) -> Result<()> {
    if let Some(other) = dp.maps.pods()?.into_iter().find(|p| p.mac == mac) {
        let (code, source) =
            if from_env { (INVALID_ENV, "CNI_ARGS MAC") } else { (INVALID_CONFIG, "runtimeConfig.mac") };
        bail!(CniError::error(
            code,
            format!("{source} {} is already the MAC of the pod at {}: a MAC is one pod's", mac_string(mac), other.addr)
        ));
    }
    Ok(())
}

/// A pod gets one address per range set (per family): asking for two of
/// one family cannot be honoured, and is refused rather than cut short.
fn one_request_per_set(conf: &NetConf, requested: &[IpAddr]) -> Result<()> {
    for set in &conf.rangesets {
        let mut inside: Vec<IpAddr> =
            requested.iter().copied().filter(|ip| set.iter().any(|r| r.contains(*ip))).collect();
        inside.sort();
        inside.dedup();
        if inside.len() > 1 {
            let list: Vec<String> = inside.iter().map(ToString::to_string).collect();
            bail!(CniError::error(
                INVALID_CONFIG,
                format!(
                    "requested IPs {} are in one range set: ebpfcni gives a pod one address per family",
                    list.join(", ")
                )
            ));
        }
    }
    Ok(())
}

/// The bridge with every range's gateway address, up. It is shared by all
/// pods of the network, so it is created when missing and never removed.
fn ensure_bridge(host: &Netlink, conf: &NetConf, allocs: &[Allocation]) -> Result<Link> {
    let existing = host.link_by_name(&conf.bridge)?;
    if existing.is_none() {
        match host.create_bridge(&conf.bridge, bridge_mac(&conf.bridge), conf.mtu) {
            // Another ADD created it meanwhile.
            Err(e) if crate::netlink::is_exists(&e) => {}
            other => other?,
        }
    }
    let bridge = host.link_by_name(&conf.bridge)?.ok_or_else(|| anyhow!("bridge {} vanished", conf.bridge))?;
    if bridge.kind.as_deref() != Some("bridge") {
        bail!(
            "link {} exists and is a {}, not a bridge: choose another \"bridge\" name",
            conf.bridge,
            bridge.kind.as_deref().unwrap_or("device of unknown kind")
        );
    }
    let have = host.addresses(bridge.index)?;
    for a in allocs {
        let gateway = Cidr { addr: a.gateway, prefix: a.address.prefix };
        check_one_gateway(&conf.bridge, &have, &gateway, conf)?;
        host.add_address(bridge.index, gateway)?;
    }
    if !bridge.up {
        host.set_up(bridge.index)?;
    }
    Ok(bridge)
}

/// The bridge carries one gateway per family, as the reference bridge
/// plugin insists: an address of the same family that is not a gateway of
/// this config (a changed config, another network on the same bridge) is
/// refused instead of piling up a second gateway.
fn check_one_gateway(bridge: &str, have: &[Cidr], gateway: &Cidr, conf: &NetConf) -> Result<()> {
    let ours = |c: &Cidr| conf.rangesets.iter().flatten().any(|r| r.gateway == c.addr);
    for a in have {
        let link_local = matches!(a.addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        let clash = a.is_ipv4() == gateway.is_ipv4()
            && !link_local
            && a.addr != gateway.addr
            && (a.is_ipv4() || a.contains(gateway.addr) || gateway.contains(a.addr));
        if clash && !ours(a) {
            bail!(CniError::error(
                INVALID_CONFIG,
                format!(
                    "bridge {bridge} already has address {a}, not the gateway {}: a bridge serves one network \
                     (delete the bridge, or give this network its own \"bridge\")",
                    gateway.addr
                )
            ));
        }
    }
    Ok(())
}

/// A locally administered unicast MAC derived from the bridge's name:
/// stable across nodes' reboots and plugin versions.
pub(crate) fn bridge_mac(name: &str) -> [u8; 6] {
    let h = crate::fnv::fnv1a64(name.as_bytes()).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

fn default_route(like: IpAddr) -> Cidr {
    let any = if like.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
    Cidr { addr: any, prefix: 0 }
}

fn gateway_for(allocs: &[Allocation], dst: &Cidr) -> Option<IpAddr> {
    allocs.iter().find(|a| a.address.is_ipv4() == dst.is_ipv4()).map(|a| a.gateway)
}

/// Inside the pod: addresses, link up, a default route per family via its
/// gateway (unless another interface of the pod already has that family's
/// default route: a second attachment), then the configured routes.
/// Returns exactly the routes installed: the result lists those and no
/// others, and a route that cannot be installed fails the ADD.
fn configure_pod(pod: &Netlink, link: &Link, conf: &NetConf, allocs: &[Allocation]) -> Result<Vec<RouteJson>> {
    for a in allocs {
        pod.add_address(link.index, a.address)?;
    }
    pod.set_up(link.index)?;
    let existing = pod.all_routes()?;
    let mut installed = Vec::new();
    for a in allocs {
        let dst = default_route(a.gateway);
        let elsewhere = existing.iter().any(|(d, _, oif)| *d == dst && *oif != link.index);
        if elsewhere {
            continue;
        }
        pod.add_route(dst, Some(a.gateway), link.index)?;
        installed.push(RouteJson { dst: dst.to_string(), gw: Some(a.gateway) });
    }
    for r in &conf.routes {
        if r.dst.prefix == 0 && r.gw.is_none() {
            continue; // the default route is handled above
        }
        let gw = match r.gw {
            Some(gw) => gw,
            None => match gateway_for(allocs, &r.dst) {
                Some(gw) => gw,
                None => continue, // no address of that family: nothing to route through
            },
        };
        pod.add_route(r.dst, Some(gw), link.index)?;
        installed.push(RouteJson { dst: r.dst.to_string(), gw: Some(gw) });
    }
    Ok(installed)
}

fn build_result(
    conf: &NetConf,
    bridge: &Link,
    host: &Link,
    pod: &Link,
    sandbox: String,
    allocs: &[Allocation],
    routes: Vec<RouteJson>,
) -> AddResult {
    let iface = |l: &Link, sandbox: String| Interface {
        name: l.name.clone(),
        mac: l.mac.map(mac_string).unwrap_or_default(),
        mtu: conf.mtu,
        sandbox,
    };
    AddResult {
        interfaces: vec![iface(bridge, String::new()), iface(host, String::new()), iface(pod, sandbox)],
        ips: allocs.iter().map(|a| ip_config(a.address, a.gateway, 2)).collect(),
        routes,
    }
}
