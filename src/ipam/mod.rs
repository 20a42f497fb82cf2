//! IP address management: which address each pod gets, recorded in a lease
//! store so that allocations survive reboots and concurrent invocations.

pub mod cidr;
pub mod range;
pub mod store;

use std::fmt;
use std::net::IpAddr;

use anyhow::Result;

pub use cidr::Cidr;
pub use range::IpRange;
pub use store::{DiskStore, Lease, LeaseStore};

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

/// Gives the pod one address from each range set (one set per family).
/// Repeated for the same container and interface, it returns the leases
/// already held instead of taking new ones: runtimes retry ADD.
pub fn allocate(
    store: &mut dyn LeaseStore,
    rangesets: &[Vec<IpRange>],
    container_id: &str,
    ifname: &str,
) -> Result<Vec<Allocation>> {
    let held = store.leases_of(container_id, ifname)?;
    let mut out = Vec::new();
    let mut taken_now: Vec<IpAddr> = Vec::new();
    for (set_index, set) in rangesets.iter().enumerate() {
        if let Some((range, lease)) = held
            .iter()
            .find_map(|l| set.iter().find(|r| r.contains(l.ip)).map(|r| (r, l)))
        {
            out.push(allocation(range, lease.ip));
            continue;
        }
        let last = store.last_reserved(set_index)?;
        let mut got = None;
        for (ri, ip) in range::candidates(set, last) {
            let lease = Lease {
                ip,
                container_id: container_id.into(),
                ifname: ifname.into(),
            };
            if store.reserve(&lease, set_index)? {
                got = Some(allocation(&set[ri], ip));
                break;
            }
        }
        match got {
            Some(a) => {
                taken_now.push(a.address.addr);
                out.push(a);
            }
            None => {
                // Leave nothing half-allocated behind.
                for ip in taken_now {
                    store.release(ip)?;
                }
                let ranges = set
                    .iter()
                    .map(|r| format!("{}-{}", r.start, r.end))
                    .collect::<Vec<_>>();
                return Err(Exhausted {
                    ranges: ranges.join(", "),
                }
                .into());
            }
        }
    }
    Ok(out)
}

/// Releases every address held by the container's interface; returns them.
pub fn release(
    store: &mut dyn LeaseStore,
    container_id: &str,
    ifname: &str,
) -> Result<Vec<IpAddr>> {
    let mut released = Vec::new();
    for lease in store.leases_of(container_id, ifname)? {
        store.release(lease.ip)?;
        released.push(lease.ip);
    }
    Ok(released)
}

fn allocation(range: &IpRange, ip: IpAddr) -> Allocation {
    Allocation {
        address: Cidr {
            addr: ip,
            prefix: range.subnet.prefix,
        },
        gateway: range.gateway,
    }
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
        let a = allocate(&mut store, &sets, "a", "eth0").unwrap();
        let b = allocate(&mut store, &sets, "b", "eth0").unwrap();
        assert_eq!(a[0].address.to_string(), "10.0.0.2/29");
        assert_eq!(a[0].gateway.to_string(), "10.0.0.1");
        assert_eq!(b[0].address.to_string(), "10.0.0.3/29");
        assert_eq!(
            release(&mut store, "a", "eth0").unwrap(),
            vec![a[0].address.addr]
        );
        // Round robin: the freed .2 is not reused before the rest of the range.
        let c = allocate(&mut store, &sets, "c", "eth0").unwrap();
        assert_eq!(c[0].address.to_string(), "10.0.0.4/29");
    }

    #[test]
    fn repeated_add_returns_existing_lease() {
        let mut store = MemStore::default();
        let sets = [set("10.0.0.0/24")];
        let first = allocate(&mut store, &sets, "a", "eth0").unwrap();
        let again = allocate(&mut store, &sets, "a", "eth0").unwrap();
        assert_eq!(first, again);
        assert_eq!(store.leases().unwrap().len(), 1);
        let other_if = allocate(&mut store, &sets, "a", "net1").unwrap();
        assert_ne!(first, other_if);
    }

    #[test]
    fn exhaustion_is_typed_and_leaves_nothing() {
        let mut store = MemStore::default();
        // /30: network .0, gateway .1, .2 assignable, .3 broadcast.
        let sets = [set("10.0.0.0/30")];
        allocate(&mut store, &sets, "a", "eth0").unwrap();
        let err = allocate(&mut store, &sets, "b", "eth0").unwrap_err();
        assert!(err.downcast_ref::<Exhausted>().is_some(), "{err:#}");
        // Dual stack: a full v6 set releases the v4 address taken first.
        let mut store = MemStore::default();
        let one = "fd00::2".parse().ok();
        let v6 = vec![IpRange::new("fd00::/64".parse().unwrap(), one, one, None).unwrap()];
        let sets = [set("10.1.0.0/24"), v6];
        allocate(&mut store, &sets, "a", "eth0").unwrap();
        assert!(allocate(&mut store, &sets, "b", "eth0").is_err());
        assert_eq!(store.leases().unwrap().len(), 2);
    }

    #[test]
    fn dual_stack_gets_one_address_per_family() {
        let mut store = MemStore::default();
        let sets = [set("10.1.0.0/24"), set("fd00:1::/64")];
        let got = allocate(&mut store, &sets, "a", "eth0").unwrap();
        assert_eq!(got.len(), 2);
        assert!(got[0].address.is_ipv4() && !got[1].address.is_ipv4());
        assert_eq!(got[1].address.to_string(), "fd00:1::2/64");
    }
}
