//! Port ranges as the datapath matches them: aligned power-of-two blocks
//! of ports, each one prefix of the iprules LPM trie, so a range of any
//! size costs one lookup per packet.

/// The fewest aligned blocks covering `first..=last` exactly, as (first
/// port of the block, number of leading port bits it fixes): at most 30.
pub fn port_blocks(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let mut start = u32::from(first);
    let end = u32::from(last) + 1; // exclusive
    while start < end {
        let mut size_bits = if start == 0 { 16 } else { start.trailing_zeros().min(16) };
        while start + (1 << size_bits) > end {
            size_bits -= 1;
        }
        out.push((start as u16, (16 - size_bits) as u8));
        start += 1 << size_bits;
    }
    out
}

/// The last port of a block.
pub fn block_end(port: u16, bits: u8) -> u16 {
    match bits {
        0 => u16::MAX,
        16.. => port,
        _ => port | (u16::MAX >> bits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(blocks: &[(u16, u8)]) -> Vec<u32> {
        blocks.iter().flat_map(|(p, b)| u32::from(*p)..=u32::from(block_end(*p, *b))).collect()
    }

    #[test]
    fn blocks_cover_ranges_exactly() {
        for (first, last) in [(80, 80), (1, 65535), (0, 65535), (1024, 2047), (1000, 3000), (65535, 65535), (7, 9)] {
            let blocks = port_blocks(first, last);
            assert_eq!(expand(&blocks), (u32::from(first)..=u32::from(last)).collect::<Vec<_>>(), "{first}-{last}");
            assert!(blocks.len() <= 30, "{first}-{last}: {}", blocks.len());
        }
        assert_eq!(port_blocks(1, 65535).len(), 16);
        assert_eq!(port_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(port_blocks(8080, 8080), vec![(8080, 16)]);
    }
}
