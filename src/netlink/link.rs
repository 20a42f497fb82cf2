//! Links: look up, create bridges and veth pairs, set master/MTU/up, delete.

use anyhow::{anyhow, Context, Result};
use neli::{
    consts::{
        nl::NlmF,
        rtnl::{Iff, Ifla, IflaInfo, RtAddrFamily, Rtm},
    },
    rtnl::{Ifinfomsg, IfinfomsgBuilder, Rtattr, RtattrBuilder},
    types::{Buffer, RtBuffer},
    Size, ToBytes,
};

use super::Netlink;

/// `VETH_INFO_PEER` from linux/veth.h.
const VETH_INFO_PEER: u16 = 1;

/// What the plugin needs to know about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub master: Option<u32>,
    /// For a veth: its peer's index (in the peer's namespace).
    pub peer: Option<u32>,
    /// The device group (`ip link set … group`).
    pub group: u32,
    pub mtu: u32,
    pub up: bool,
}

fn attr<T: neli::consts::rtnl::RtaType, P: Size + ToBytes>(ty: T, payload: P) -> Result<Rtattr<T, Buffer>> {
    RtattrBuilder::default()
        .rta_type(ty)
        .rta_payload(payload)
        .build()
        .map_err(|e| anyhow!("build netlink attribute: {e}"))
}

fn ifinfo(index: i32, attrs: RtBuffer<Ifla, Buffer>) -> Result<Ifinfomsg> {
    IfinfomsgBuilder::default()
        .ifi_family(RtAddrFamily::Unspecified)
        .ifi_index(index)
        .rtattrs(attrs)
        .build()
        .map_err(|e| anyhow!("build ifinfomsg: {e}"))
}

fn parse_link(msg: &Ifinfomsg) -> Link {
    let attrs = msg.rtattrs().get_attr_handle();
    let name = attrs.get_attr_payload_as_with_len::<String>(Ifla::Ifname).unwrap_or_default();
    let kind = attrs
        .get_nested_attributes::<IflaInfo>(Ifla::Linkinfo)
        .ok()
        .and_then(|info| info.get_attr_payload_as_with_len::<String>(IflaInfo::Kind).ok());
    let mac = attrs.get_attribute(Ifla::Address).and_then(|a| <[u8; 6]>::try_from(a.rta_payload().as_ref()).ok());
    let master = attrs.get_attr_payload_as::<u32>(Ifla::Master).ok();
    let peer = attrs.get_attr_payload_as::<u32>(Ifla::Link).ok();
    let group = attrs.get_attr_payload_as::<u32>(Ifla::Group).unwrap_or(0);
    let mtu = attrs.get_attr_payload_as::<u32>(Ifla::Mtu).unwrap_or(0);
    Link {
        index: *msg.ifi_index() as u32,
        name,
        kind,
        mac,
        master,
        peer,
        group,
        mtu,
        up: msg.ifi_flags().contains(Iff::UP),
    }
}

impl Netlink {
    /// The link called `name`, or None.
    pub fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifla::Ifname, name)?);
        self.get_link(ifinfo(0, attrs)?).with_context(|| format!("look up link {name}"))
    }

    fn get_link(&self, msg: Ifinfomsg) -> Result<Option<Link>> {
        match self.query(Rtm::Getlink, NlmF::empty(), msg) {
            Ok(links) => Ok(links.first().map(parse_link)),
            Err(e) if super::is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a bridge with a fixed MAC: a bridge left to choose takes
    /// its lowest port's address, so the gateway's MAC would change as pods
    /// come and go and leave stale ARP entries in every pod.
    pub fn create_bridge(&self, name: &str, mac: [u8; 6], mtu: Option<u32>) -> Result<()> {
        let mut info = RtBuffer::new();
        info.push(attr(IflaInfo::Kind, "bridge")?);
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifla::Ifname, name)?);
        attrs.push(attr(Ifla::Address, mac)?);
        if let Some(mtu) = mtu {
            attrs.push(attr(Ifla::Mtu, mtu)?);
        }
        attrs.push(attr(Ifla::Linkinfo, info)?);
        self.request(Rtm::Newlink, NlmF::CREATE | NlmF::EXCL, ifinfo(0, attrs)?)
            .with_context(|| format!("create bridge {name}"))
    }

    /// Creates a collect-metadata ("external") VXLAN device: the tunnel key
    /// of each packet is set by BPF (`to_tunnel`), not by the device. ARP
    /// is off on it (the program writes the peer's MAC into each frame),
    /// learning is off (nothing learned from what arrives is trusted).
    pub fn create_vxlan(&self, name: &str, mac: [u8; 6], mtu: u32, port: u16) -> Result<()> {
        // IFLA_VXLAN_* from linux/if_link.h.
        const IFLA_VXLAN_LEARNING: u16 = 7;
        const IFLA_VXLAN_PORT: u16 = 15;
        const IFLA_VXLAN_COLLECT_METADATA: u16 = 25;
        let mut data = RtBuffer::<u16, Buffer>::new();
        data.push(attr(IFLA_VXLAN_LEARNING, 0u8)?);
        data.push(attr(IFLA_VXLAN_PORT, port.to_be_bytes())?);
        data.push(attr(IFLA_VXLAN_COLLECT_METADATA, 1u8)?);
        let mut info = RtBuffer::new();
        info.push(attr(IflaInfo::Kind, "vxlan")?);
        info.push(attr(IflaInfo::Data, data)?);
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifla::Ifname, name)?);
        attrs.push(attr(Ifla::Address, mac)?);
        attrs.push(attr(Ifla::Mtu, mtu)?);
        attrs.push(attr(Ifla::Linkinfo, info)?);
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_index(0)
            .ifi_flags(Iff::NOARP)
            .ifi_change(Iff::NOARP)
            .rtattrs(attrs)
            .build()
            .map_err(|e| anyhow!("build ifinfomsg: {e}"))?;
        self.request(Rtm::Newlink, NlmF::CREATE | NlmF::EXCL, msg)
            .with_context(|| format!("create vxlan device {name}"))
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifla::Mtu, mtu)?);
        self.request(Rtm::Setlink, NlmF::empty(), ifinfo(index as i32, attrs)?)
            .with_context(|| format!("set MTU of link {index} to {mtu}"))
    }

    /// Every link of the namespace.
    pub fn links(&self) -> Result<Vec<Link>> {
        let all = self.query(Rtm::Getlink, NlmF::DUMP, ifinfo(0, RtBuffer::new())?).context("list links")?;
        Ok(all.iter().map(parse_link).collect())
    }

    /// Creates a veth pair whose `peer` end is born inside the namespace
    /// `peer_netns_fd` (so its name never clashes with host links), with
    /// `peer_mac` when given. The host end is in device `group` from birth
    /// (the kernel applies a group, unlike an alias, at creation), so it is
    /// recognisable even if the creator dies the next instant.
    pub fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_netns_fd: i32,
        mtu: Option<u32>,
        peer_mac: Option<[u8; 6]>,
        group: u32,
    ) -> Result<()> {
        let mut peer_attrs = RtBuffer::new();
        peer_attrs.push(attr(Ifla::Ifname, peer)?);
        if let Some(mac) = peer_mac {
            peer_attrs.push(attr(Ifla::Address, mac)?);
        }
        peer_attrs.push(attr(Ifla::NetNsFd, peer_netns_fd as u32)?);
        if let Some(mtu) = mtu {
            peer_attrs.push(attr(Ifla::Mtu, mtu)?);
        }
        let mut data = RtBuffer::<u16, Buffer>::new();
        data.push(attr(VETH_INFO_PEER, ifinfo(0, peer_attrs)?)?);
        let mut info = RtBuffer::new();
        info.push(attr(IflaInfo::Kind, "veth")?);
        info.push(attr(IflaInfo::Data, data)?);
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifla::Ifname, host)?);
        attrs.push(attr(Ifla::Group, group)?);
        if let Some(mtu) = mtu {
            attrs.push(attr(Ifla::Mtu, mtu)?);
        }
        attrs.push(attr(Ifla::Linkinfo, info)?);
        self.request(Rtm::Newlink, NlmF::CREATE | NlmF::EXCL, ifinfo(0, attrs)?)
            .with_context(|| format!("create veth pair {host} <-> {peer}"))
    }

    /// Enslaves the link to `master` (a bridge).
    pub fn set_master(&self, index: u32, master: u32) -> Result<()> {
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifla::Master, master)?);
        self.request(Rtm::Setlink, NlmF::empty(), ifinfo(index as i32, attrs)?)
            .with_context(|| format!("attach link {index} to bridge {master}"))
    }

    /// A bridge port's hairpin mode: whether a frame may leave through the
    /// port it came in on. br_netfilter translates bridged frames (a pod
    /// reaching itself through a Service), which then must go back out of
    /// their own port: kubelet's hairpin-veth mode.
    pub fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        const AF_BRIDGE: u8 = 7;
        const IFLA_PROTINFO: u16 = 12;
        const IFLA_BRPORT_MODE: u16 = 4;
        const NLA_F_NESTED: u16 = 0x8000;
        let mut port = RtBuffer::<u16, Buffer>::new();
        port.push(attr(IFLA_BRPORT_MODE, u8::from(on))?);
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifla::UnrecognizedConst(IFLA_PROTINFO | NLA_F_NESTED), port)?);
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::UnrecognizedConst(AF_BRIDGE))
            .ifi_index(index as i32)
            .rtattrs(attrs)
            .build()
            .map_err(|e| anyhow!("build ifinfomsg: {e}"))?;
        self.request(Rtm::Setlink, NlmF::empty(), msg).with_context(|| format!("set hairpin mode of link {index}"))
    }

    pub fn set_up(&self, index: u32) -> Result<()> {
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_index(index as i32)
            .up()
            .build()
            .map_err(|e| anyhow!("build ifinfomsg: {e}"))?;
        self.request(Rtm::Setlink, NlmF::empty(), msg).with_context(|| format!("set link {index} up"))
    }

    /// Deletes the link; Ok(false) when it did not exist.
    pub fn delete_link(&self, name: &str) -> Result<bool> {
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifla::Ifname, name)?);
        self.dellink(ifinfo(0, attrs)?, name)
    }

    /// Deletes the link with this index (never another that took its name
    /// since); Ok(false) when there is none.
    pub fn delete_link_index(&self, index: u32) -> Result<bool> {
        self.dellink(ifinfo(index as i32, RtBuffer::new())?, &format!("index {index}"))
    }

    fn dellink(&self, msg: Ifinfomsg, what: &str) -> Result<bool> {
        match self.request(Rtm::Dellink, NlmF::empty(), msg) {
            Ok(()) => Ok(true),
            Err(e) if super::is_not_found(&e) => Ok(false),
            Err(e) => Err(e.context(format!("delete link {what}"))),
        }
    }
}
