//! rtnetlink through neli: links (bridge, veth), addresses and routes, in
//! the host or in a pod's network namespace. Errors from the kernel keep
//! their errno (as `std::io::Error`) so callers can tell "not found" or
//! "exists" from real failures.

mod addr;
mod link;
pub mod netns;
mod route;

use std::fmt::Debug;
use std::io;

use anyhow::{anyhow, Result};
use neli::{
    consts::{nl::NlmF, rtnl::Rtm, socket::NlFamily},
    err::RouterError,
    nl::NlPayload,
    router::synchronous::NlRouter,
    utils::Groups,
    FromBytesWithInput, Size, ToBytes,
};

pub use link::Link;
pub use netns::Netns;
pub use route::OwnedRoute;

/// An rtnetlink socket, bound to the network namespace it was opened in.
pub struct Netlink {
    router: NlRouter,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn connect() -> Result<Self> {
        let (router, _) = NlRouter::connect(NlFamily::Route, None, Groups::empty())
            .map_err(|e| anyhow!("open rtnetlink socket: {e}"))?;
        router.enable_ext_ack(true).map_err(|e| anyhow!("enable netlink extended ack: {e}"))?;
        Ok(Netlink { router })
    }

    /// Opens a socket inside `ns`; it stays there for its whole life.
    pub fn connect_in(ns: &Netns) -> Result<Self> {
        ns.run(Netlink::connect)?
    }

    /// Sends a request and waits for the kernel's acknowledgement.
    fn request<P>(&self, ty: Rtm, flags: NlmF, payload: P) -> Result<()>
    where
        P: Size + ToBytes + FromBytesWithInput<Input = usize> + Debug,
    {
        let recv = self
            .router
            .send::<Rtm, P, Rtm, P>(ty, flags | NlmF::ACK, NlPayload::Payload(payload))
            .map_err(kernel_error)?;
        for msg in recv {
            msg.map_err(kernel_error)?;
        }
        Ok(())
    }

    /// Sends a get or dump request and collects the replies' payloads.
    fn query<P>(&self, ty: Rtm, flags: NlmF, payload: P) -> Result<Vec<P>>
    where
        P: Size + ToBytes + FromBytesWithInput<Input = usize> + Debug,
    {
        let recv = self.router.send::<Rtm, P, Rtm, P>(ty, flags, NlPayload::Payload(payload)).map_err(kernel_error)?;
        let mut out = Vec::new();
        for msg in recv {
            if let NlPayload::Payload(p) = msg.map_err(kernel_error)?.nl_payload() {
                out.push(clone_payload(p)?);
            }
        }
        Ok(out)
    }
}

/// neli's payload types are not all `Clone`; a round trip through bytes is.
fn clone_payload<P>(p: &P) -> Result<P>
where
    P: Size + ToBytes + FromBytesWithInput<Input = usize>,
{
    let mut buf = io::Cursor::new(Vec::new());
    p.to_bytes(&mut buf).map_err(|e| anyhow!("serialize netlink payload: {e}"))?;
    let bytes = buf.into_inner();
    let len = bytes.len();
    P::from_bytes_with_input(&mut io::Cursor::new(bytes), len).map_err(|e| anyhow!("parse netlink payload: {e}"))
}

/// The kernel's errno as an `io::Error` (so `downcast_ref` finds it), other
/// router failures as text.
fn kernel_error<T: Debug, P: Debug>(e: RouterError<T, P>) -> anyhow::Error {
    match e {
        RouterError::Nlmsgerr(err) => io::Error::from_raw_os_error(-*err.error()).into(),
        other => anyhow!("netlink: {other}"),
    }
}

/// The errno carried by an error from this module, if any.
pub fn errno(e: &anyhow::Error) -> Option<i32> {
    e.chain().find_map(|c| c.downcast_ref::<io::Error>()).and_then(io::Error::raw_os_error)
}

pub fn is_not_found(e: &anyhow::Error) -> bool {
    matches!(errno(e), Some(libc_errno::ENODEV) | Some(libc_errno::ENOENT) | Some(libc_errno::ESRCH))
}

pub fn is_exists(e: &anyhow::Error) -> bool {
    errno(e) == Some(libc_errno::EEXIST)
}

/// The few errno values this crate tells apart, from nix (no extra crate).
mod libc_errno {
    use nix::errno::Errno;
    pub const ENODEV: i32 = Errno::ENODEV as i32;
    pub const ENOENT: i32 = Errno::ENOENT as i32;
    pub const ESRCH: i32 = Errno::ESRCH as i32;
    pub const EEXIST: i32 = Errno::EEXIST as i32;
}
