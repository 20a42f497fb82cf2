//! IP address management: which address each pod gets, recorded in a lease
//! store so that allocations survive reboots and concurrent invocations.

pub mod attachments;
pub mod cidr;
pub mod range;
pub mod store;

use std::fmt;
use std::net::IpAddr;

use anyhow::Result;

pub use attachments::{format_mac, AttachmentRecord};
pub use cidr::Cidr;
pub use range::IpRange;
pub use store::{read_leases, DiskStore, Lease, LeaseStore};

/// One address given to a pod, with the range it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The pod's address with its subnet's prefix length.
    pub address: Cidr,
    pub gateway: IpAddr,
}

/// Every address of a range set is leased.
#[derive(Debug)]
pub struct Exhausted {
    pub ranges: String,
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no free address left in {}", self.ranges)
    }
}

impl std::error::Error for Exhausted {}

/// A requested address that cannot be given.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// Gives the pod one address from each range set (one set per family):
/// the requested one for that family when given, else the next free one
/// round robin. Repeated for the same container and interface, it returns
/// the leases already held instead of taking new ones: runtimes retry ADD.
pub fn allocate(
    store: &mut dyn LeaseStore,
    rangesets: &[Vec<IpRange>],
    container_id: &str,
    ifname: &str,
    requested: &[IpAddr],
) -> Result<Vec<Allocation>> {
    for ip in requested {
        if !rangesets.iter().flatten().any(|r| r.contains(*ip)) {
            return Err(Unavailable(format!("requested IP {ip} is in none of the network's ranges")).into());
        }
    }
    let held = store.leases_of(container_id, ifname)?;
    let mut out = Vec::new();
    let mut taken_now: Vec<IpAddr> = Vec::new();
    for (set_index, set) in rangesets.iter().enumerate() {
        if let Some((range, lease)) = held.iter().find_map(|l| set.iter().find(|r| r.contains(l.ip)).map(|r| (r, l))) {
            out.push(allocation(range, lease.ip));
            continue;
        }
        let got = match requested.iter().find(|ip| set.iter().any(|r| r.contains(**ip))) {
            Some(ip) => reserve_requested(store, set, set_index, *ip, container_id, ifname),
            None => reserve_next(store, set, set_index, container_id, ifname),
        };
        match got {
            Ok(a) => {
                taken_now.push(a.address.addr);
                out.push(a);
            }
            Err(e) => {
                // Leave nothing half-allocated behind.
                for ip in taken_now {
                    store.release(ip)?;
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn reserve_requested(
    store: &mut dyn LeaseStore,
    set: &[IpRange],
    set_index: usize,
    ip: IpAddr,
    container_id: &str,
    ifname: &str,
) -> Result<Allocation> {
    let range = set.iter().find(|r| r.contains(ip)).expect("checked by caller");
    if !range.is_assignable(ip) {
        return Err(Unavailable(format!("requested IP {ip} is the gateway of its range")).into());
    }
    let lease = Lease { ip, container_id: container_id.into(), ifname: ifname.into() };
    if !store.reserve(&lease, set_index)? {
        return Err(Unavailable(format!("requested IP {ip} is already leased")).into());
    }
    Ok(allocation(range, ip))
}

fn reserve_next(
    store: &mut dyn LeaseStore,
    set: &[IpRange],
    set_index: usize,
    container_id: &str,
    ifname: &str,
) -> Result<Allocation> {
    let last = store.last_reserved(set_index)?;
    for (ri, ip) in range::candidates(set, last) {
        let lease = Lease { ip, container_id: container_id.into(), ifname: ifname.into() };
        if store.reserve(&lease, set_index)? {
            return Ok(allocation(&set[ri], ip));
        }
    }
    let ranges = set.iter().map(|r| format!("{}-{}", r.start, r.end)).collect::<Vec<_>>();
    Err(Exhausted { ranges: ranges.join(", ") }.into())
}

/// Whether the range set has an address left (for STATUS).
pub fn has_free(store: &dyn LeaseStore, set: &[IpRange]) -> Result<bool> {
    for (_, ip) in range::candidates(set, None) {
        if !store.is_taken(ip)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Releases every address held by the container's interface; returns them.
pub fn release(store: &mut dyn LeaseStore, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
    let mut released = Vec::new();
    for lease in store.leases_of(container_id, ifname)? {
        store.release(lease.ip)?;
        released.push(lease.ip);
    }
    Ok(released)
}

fn allocation(range: &IpRange, ip: IpAddr) -> Allocation {
    Allocation { address: Cidr { addr: ip, prefix: range.subnet.prefix }, gateway: range.gateway }
}

#[cfg(test)]
mod tests {
    use super::store::MemStore;
    use super::*;

    fn set(subnet: &str) -> Vec<IpRange> {
        vec![IpRange::new(subnet.parse().unwrap(), None, None, None).unwrap()]
    }

    #[test]
    fn allocates_round_robin_and_releases() {
        let mut store = MemStore::default();
        let sets = [set("10.0.0.0/29")];
        let a = allocate(&mut store, &sets, "a", "eth0", &[]).unwrap();
        let b = allocate(&mut store, &sets, "b", "eth0", &[]).unwrap();
        assert_eq!(a[0].address.to_string(), "10.0.0.2/29");
        assert_eq!(a[0].gateway.to_string(), "10.0.0.1");
        assert_eq!(b[0].address.to_string(), "10.0.0.3/29");
        assert_eq!(release(&mut store, "a", "eth0").unwrap(), vec![a[0].address.addr]);
        // Round robin: the freed .2 is not reused before the rest of the range.
        let c = allocate(&mut store, &sets, "c", "eth0", &[]).unwrap();
        assert_eq!(c[0].address.to_string(), "10.0.0.4/29");
    }

    #[test]
    fn repeated_add_returns_existing_lease() {
        let mut store = MemStore::default();
        let sets = [set("10.0.0.0/24")];
        let first = allocate(&mut store, &sets, "a", "eth0", &[]).unwrap();
        let again = allocate(&mut store, &sets, "a", "eth0", &[]).unwrap();
        assert_eq!(first, again);
        assert_eq!(store.leases().unwrap().len(), 1);
        let other_if = allocate(&mut store, &sets, "a", "net1", &[]).unwrap();
        assert_ne!(first, other_if);
    }

    #[test]
    fn exhaustion_is_typed_and_leaves_nothing() {
        let mut store = MemStore::default();
        // /30: network .0, gateway .1, .2 assignable, .3 broadcast.
        let sets = [set("10.0.0.0/30")];
        allocate(&mut store, &sets, "a", "eth0", &[]).unwrap();
        let err = allocate(&mut store, &sets, "b", "eth0", &[]).unwrap_err();
        assert!(err.downcast_ref::<Exhausted>().is_some(), "{err:#}");
        // Dual stack: a full v6 set releases the v4 address taken first.
        let mut store = MemStore::default();
        let one = "fd00::2".parse().ok();
        let v6 = vec![IpRange::new("fd00::/64".parse().unwrap(), one, one, None).unwrap()];
        let sets = [set("10.1.0.0/24"), v6];
        allocate(&mut store, &sets, "a", "eth0", &[]).unwrap();
        assert!(allocate(&mut store, &sets, "b", "eth0", &[]).is_err());
        assert_eq!(store.leases().unwrap().len(), 2);
    }

    #[test]
    fn requested_addresses_are_honoured_or_refused() {
        let mut store = MemStore::default();
        let sets = [set("10.0.0.0/24"), set("fd00::/64")];
        let want: Vec<IpAddr> = vec!["10.0.0.77".parse().unwrap()];
        let got = allocate(&mut store, &sets, "a", "eth0", &want).unwrap();
        assert_eq!(got[0].address.to_string(), "10.0.0.77/24");
        assert_eq!(got[1].address.to_string(), "fd00::2/64");
        let err = allocate(&mut store, &sets, "b", "eth0", &want).unwrap_err();
        assert!(err.downcast_ref::<Unavailable>().is_some(), "{err:#}");
        assert_eq!(store.leases().unwrap().len(), 2, "refused request took nothing");
        let outside = vec!["192.168.0.1".parse().unwrap()];
        assert!(allocate(&mut store, &sets, "c", "eth0", &outside).is_err());
        let gw = vec!["10.0.0.1".parse().unwrap()];
        assert!(allocate(&mut store, &sets, "d", "eth0", &gw).is_err());
    }

    #[test]
    fn dual_stack_gets_one_address_per_family() {
        let mut store = MemStore::default();
        let sets = [set("10.1.0.0/24"), set("fd00:1::/64")];
        let got = allocate(&mut store, &sets, "a", "eth0", &[]).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got[0].address.is_ipv4() && !got[1].address.is_ipv4());
        assert_eq!(got[1].address.to_string(), "fd00:1::2/64");
    }
}
