//! Asks the kernel over nfnetlink whether named objects of ebpfcni's
//! nftables table exist, without running `nft` (a few ms an exec): an
//! ADD of a network that has nothing in the table and wants nothing there
//! is then done with the node in one round trip per object.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::libc;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETSET: u16 = 10;
/// Both NFTA_CHAIN_TABLE and NFTA_SET_TABLE.
const NFTA_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_SET_NAME: u16 = 2;
const NFPROTO_INET: u8 = 1;
const NLMSG_ERROR: u16 = 2;

/// A named object of a table.
#[derive(Clone, Copy)]
pub enum Object<'a> {
    Chain(&'a str),
    Set(&'a str),
}

fn push_attr(msg: &mut Vec<u8>, kind: u16, s: &str) {
    let len = 4 + s.len() + 1;
    msg.extend_from_slice(&(len as u16).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(s.as_bytes());
    msg.push(0);
    msg.resize(msg.len().next_multiple_of(4), 0);
}

fn request(table: &str, object: Object<'_>, seq: u32) -> Vec<u8> {
    let (msg_type, name_attr, name) = match object {
        Object::Chain(n) => (NFT_MSG_GETCHAIN, NFTA_CHAIN_NAME, n),
        Object::Set(n) => (NFT_MSG_GETSET, NFTA_SET_NAME, n),
    };
    let mut msg = vec![0u8; 16];
    msg[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg_type).to_ne_bytes());
    msg[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nfgenmsg: family, version 0, resource id 0.
    msg.extend_from_slice(&[NFPROTO_INET, 0, 0, 0]);
    push_attr(&mut msg, NFTA_TABLE, table);
    push_attr(&mut msg, name_attr, name);
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    msg
}

/// Whether any of `objects` of inet table `table` exists in this network
/// namespace. An error when the kernel cannot be asked (no nfnetlink) or
/// answers something else than the object or "no such object".
pub fn any_exists(table: &str, objects: &[Object<'_>]) -> io::Result<bool> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut buf = vec![0u8; 16384];
    for (seq, object) in (1u32..).zip(objects) {
        let msg = request(table, *object, seq);
        // SAFETY: a valid buffer of msg.len() bytes; the kernel is the peer.
        let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let reply = &buf[..n as usize];
        if reply.len() < 16 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "short nfnetlink reply"));
        }
        let kind = u16::from_ne_bytes([reply[4], reply[5]]);
        if kind != NLMSG_ERROR {
            return Ok(true); // the object itself
        }
        if reply.len() < 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "short nfnetlink error"));
        }
        match -i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]) {
            libc::ENOENT => continue,
            0 => return Err(io::Error::new(io::ErrorKind::InvalidData, "nfnetlink acknowledged without an answer")),
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_aligned_netlink_messages() {
        let msg = request("ebpfcni", Object::Chain("masq-n"), 7);
        assert_eq!(msg.len() % 4, 0);
        assert_eq!(u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize, msg.len());
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), (10 << 8) | 4);
        // header, nfgenmsg, "ebpfcni\0" (4 + 8), "masq-n\0" (4 + 7, padded to 12)
        assert_eq!(msg.len(), 16 + 4 + 12 + 12);
        assert_eq!(&msg[24..32], b"ebpfcni\0");
    }
}
