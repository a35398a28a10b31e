//! Pictures of masks, for `tdlc masks`: the `T×S` score plane of one head
//! of a fused attention, with the mask's visible entries (brute force, where
//! the sizes allow) drawn over its tile classification
//! ([`tdl_passes::tiles::iteration_space`]), as a PNG.
//!
//! The plane is downsampled to at most [`MAX_SIDE`] pixels a side: pixel
//! row `y` covers the queries `⌊y·T/H⌋ .. ⌊(y+1)·T/H⌋`, column `x` the keys
//! likewise. Nothing of size `T×S` is allocated: the picture holds one byte
//! per pixel for visibility and one for the tile classes it covers.

use std::ops::Range;
use std::path::{Path, PathBuf};

use tdl_ir::{Bindings, Graph, NodeId};
use tdl_passes::tiles::{iteration_space, Ctx, TileClass};
use tdl_reference::mask::MaskEval;
use tdl_reference::Tensor;

use crate::tiling::{AttentionMask, MaskUnavailable};

pub use crate::tiling::BRUTE_FORCE_LIMIT;

/// The largest picture side, in pixels.
pub const MAX_SIDE: usize = 1024;

/// The most q-tiles drawn (the classes are kept per q-tile).
pub const MAX_Q_TILES: usize = 1 << 20;

/// An RGB colour.
pub type Rgb = [u8; 3];

/// A hidden pixel of an Empty tile: light grey.
pub const EMPTY_HIDDEN: Rgb = [222, 222, 222];
/// A hidden pixel of a Partial tile: light orange.
pub const PARTIAL_HIDDEN: Rgb = [255, 212, 150];
/// A visible pixel of a Partial tile: dark orange (brown).
pub const PARTIAL_VISIBLE: Rgb = [150, 70, 0];
/// A hidden pixel of a Full tile: light green.
pub const FULL_HIDDEN: Rgb = [190, 235, 190];
/// A visible pixel of a Full tile: dark green.
pub const FULL_VISIBLE: Rgb = [20, 100, 35];
/// A pixel where brute force contradicts the tile class (a visible entry in
/// an Empty tile, or a Full tile with a hidden block): red. A bug.
pub const MISMATCH_VISIBLE: Rgb = [200, 0, 0];
/// A pixel of Full tiles with no visible entry (contradiction): light red.
pub const MISMATCH_HIDDEN: Rgb = [255, 150, 150];
/// Tile borders darken the pixels under them by this factor (in 256ths).
pub const BORDER_SHADE: u16 = 150;

/// The long help of `tdlc masks`.
pub const HELP: &str = "\
Draw each fused attention's mask and its tile classification as a PNG.

For every fused attention of the selected graphs (after the default pass
pipeline, as `tdlc explain`), draws the T×S score plane of one head
(--head, default 0): rows are queries (q = 0 at the top), columns are keys
(k = 0 at the left). Sizes come from the attention's types and --bind.

Colours:
  light grey      an Empty tile (skipped: no entry visible)
  light orange    a Partial tile (the mask is evaluated in it), hidden entries
  dark orange     a Partial tile, visible entries
  light green     a Full tile (computed without the mask)
  dark green      a Full tile, visible entries
  red             brute force contradicts the tile class (a bug in tdlc:
                  please report it); dark red for a visible entry in an
                  Empty tile, light red for a hidden block in a Full tile
  thin dark lines tile borders, drawn where tiles are at least 4 pixels wide

The picture is at most 1024×1024 pixels: each pixel covers a block of
scores, and is dark (visible) if any score in it is visible. A pixel that
covers tiles of different classes is drawn as Partial. Visible entries are
found by brute force only where T·S <= 2^26; above that only the tile
classes are drawn (light colours), and the printed line says so.
Unmasked attentions are all Full. Masks that read run-time data (document
ids, a block layout input) are an error.

With one attention, the picture goes to the --png path exactly; with
several (several graphs or attentions), to OUT-<graph>-<i>.png next to it
(i counts the attentions of each graph from 0). One line per file written
gives its path, graph, mask, sizes and the tile counts of the head drawn.";

/// One attention's picture.
#[derive(Clone, Debug)]
pub struct Picture {
    pub width: usize,
    pub height: usize,
    /// Row-major RGB, `3 · width · height` bytes.
    pub rgb: Vec<u8>,
    pub t: usize,
    pub s: usize,
    pub heads: usize,
    pub head: usize,
    pub tile_q: usize,
    pub tile_k: usize,
    /// Tiles of the head drawn.
    pub tiles_total: usize,
    pub tiles_full: usize,
    pub tiles_partial: usize,
    pub tiles_empty: usize,
    /// Whether the visible entries were drawn (T·S within
    /// [`BRUTE_FORCE_LIMIT`]).
    pub drawn_entries: bool,
    /// Visible entries ÷ T·S for the head drawn, when brute force ran.
    pub density: Option<f64>,
    /// Pixels where brute force contradicts the tile classes.
    pub mismatches: usize,
}

/// `⌊i·n/parts⌋` for `i` in `0..=parts`: the starts of `parts` nearly equal
/// blocks of `0..n` (`parts <= n`, so none is empty).
fn block_starts(n: usize, parts: usize) -> Vec<usize> {
    (0..=parts).map(|i| ((i as u128 * n as u128) / parts as u128) as usize).collect()
}

/// The block (pixel) holding index `i`.
fn block_of(starts: &[usize], i: usize) -> usize {
    starts.partition_point(|&s| s <= i) - 1
}

const BIT_EMPTY: u8 = 1;
const BIT_PARTIAL: u8 = 2;
const BIT_FULL: u8 = 4;

fn bit(c: TileClass) -> u8 {
    match c {
        TileClass::Empty => BIT_EMPTY,
        TileClass::Partial => BIT_PARTIAL,
        TileClass::Full => BIT_FULL,
    }
}

/// Draws head `head` of the attention node `id` of `g`.
pub fn picture(
    g: &Graph,
    id: NodeId,
    bindings: &Bindings,
    tile_q: usize,
    tile_k: usize,
    head: usize,
) -> Result<Picture, String> {
    let am = AttentionMask::of(g, id, bindings).map_err(|e| match e {
        MaskUnavailable::RunTimeData => {
            "its mask reads run-time data (document ids or a block layout input), which `tdlc masks` cannot draw"
                .to_string()
        }
        MaskUnavailable::Sizes(why) => why,
    })?;
    let (t, s, heads) = (am.t, am.s, am.heads);
    let (Ok(t_u), Ok(s_u), Ok(h_u)) = (usize::try_from(t), usize::try_from(s), usize::try_from(heads)) else {
        return Err("sizes do not fit in memory indices".into());
    };
    if head >= h_u {
        return Err(format!("--head {head}: the attention has {h_u} head(s)"));
    }
    let (width, height) = (s_u.min(MAX_SIDE), t_u.min(MAX_SIDE));
    let rows = block_starts(t_u, height);
    let cols = block_starts(s_u, width);
    let (nq, nk) = (t_u.div_ceil(tile_q), s_u.div_ceil(tile_k));
    if nq > MAX_Q_TILES {
        return Err(format!(
            "T = {t_u} makes {nq} q-tiles of {tile_q}: more than {MAX_Q_TILES} to draw; pass a larger --tile q=N"
        ));
    }

    // The tile classes each pixel covers, as bits.
    let mut classes = vec![0u8; width * height];
    let (mut full, mut partial) = (0usize, 0usize);
    let mut visible = vec![false; width * height];
    let mut drawn_entries = false;
    let mut density = None;
    match &am.mask {
        None => {
            classes.fill(BIT_FULL);
            full = nq * nk;
            visible.fill(true);
            drawn_entries = true;
            density = Some(1.0);
        }
        Some((m, tensors)) => {
            let data = am.data();
            // Heads beyond the one drawn are not needed.
            let ctx = Ctx { t, s, heads: head + 1, bindings, data: &data };
            let space = iteration_space(m, &ctx, tile_q, tile_k)?;
            let runs = &space.per_head[head];
            let mut colbits = vec![0u8; width];
            for (qi, row) in runs.iter().enumerate() {
                // The k intervals of this q-tile, gaps (Empty) included.
                colbits.fill(0);
                let mut mark = |k: Range<usize>, c: TileClass| {
                    if k.start >= k.end {
                        return;
                    }
                    for b in &mut colbits[block_of(&cols, k.start)..=block_of(&cols, k.end - 1)] {
                        *b |= bit(c);
                    }
                };
                let mut next = 0usize;
                for (r, c) in row {
                    mark((next * tile_k).min(s_u)..(r.start * tile_k).min(s_u), TileClass::Empty);
                    mark((r.start * tile_k).min(s_u)..(r.end * tile_k).min(s_u), *c);
                    match c {
                        TileClass::Full => full += r.len(),
                        _ => partial += r.len(),
                    }
                    next = r.end;
                }
                mark((next * tile_k).min(s_u)..s_u, TileClass::Empty);
                let q0 = qi * tile_q;
                let q1 = ((qi + 1) * tile_q).min(t_u);
                for y in block_of(&rows, q0)..=block_of(&rows, q1 - 1) {
                    for (p, b) in classes[y * width..(y + 1) * width].iter_mut().zip(&colbits) {
                        *p |= *b;
                    }
                }
            }
            let points = (t as u64).saturating_mul(s as u64);
            if points <= BRUTE_FORCE_LIMIT {
                let refs: Vec<&Tensor> = tensors.iter().collect();
                let eval = MaskEval::new(m, &refs, t_u, s_u, bindings).map_err(|e| e.to_string())?;
                let mut count: u64 = 0;
                for y in 0..height {
                    for q in rows[y]..rows[y + 1] {
                        for x in 0..width {
                            for k in cols[x]..cols[x + 1] {
                                if eval.holds(q, k, head).map_err(|e| e.to_string())? {
                                    count += 1;
                                    visible[y * width + x] = true;
                                }
                            }
                        }
                    }
                }
                drawn_entries = true;
                density = Some(count as f64 / points as f64);
            }
        }
    }

    let total = nq * nk;
    let mut rgb = Vec::with_capacity(width * height * 3);
    let mut mismatches = 0usize;
    for (bits, vis) in classes.iter().zip(&visible) {
        let colour = match (*bits, drawn_entries, *vis) {
            (BIT_EMPTY, _, false) => EMPTY_HIDDEN,
            (BIT_EMPTY, true, true) => {
                mismatches += 1;
                MISMATCH_VISIBLE
            }
            (BIT_FULL, false, _) => FULL_HIDDEN,
            (BIT_FULL, true, true) => FULL_VISIBLE,
            (BIT_FULL, true, false) => {
                mismatches += 1;
                MISMATCH_HIDDEN
            }
            (_, true, true) => PARTIAL_VISIBLE,
            _ => PARTIAL_HIDDEN,
        };
        rgb.extend_from_slice(&colour);
    }

    // Tile borders, where tiles are at least 4 pixels wide (and high).
    let shade = |rgb: &mut [u8], i: usize| {
        for c in &mut rgb[3 * i..3 * i + 3] {
            *c = ((*c as u16 * BORDER_SHADE) / 256) as u8;
        }
    };
    if (tile_q as u128) * (height as u128) >= 4 * t_u as u128 {
        for i in 1..nq {
            let y = block_of(&rows, i * tile_q);
            for x in 0..width {
                shade(&mut rgb, y * width + x);
            }
        }
    }
    if (tile_k as u128) * (width as u128) >= 4 * s_u as u128 {
        for i in 1..nk {
            let x = block_of(&cols, i * tile_k);
            for y in 0..height {
                shade(&mut rgb, y * width + x);
            }
        }
    }

    Ok(Picture {
        width,
        height,
        rgb,
        t: t_u,
        s: s_u,
        heads: h_u,
        head,
        tile_q,
        tile_k,
        tiles_total: total,
        tiles_full: full,
        tiles_partial: partial,
        tiles_empty: total - full - partial,
        drawn_entries,
        density,
        mismatches,
    })
}

/// Writes `p` as an 8-bit RGB PNG.
pub fn write_png(p: &Picture, path: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    let file = std::fs::File::create(path).map_err(|e| err(&e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), p.width as u32, p.height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(|e| err(&e))?;
    w.write_image_data(&p.rgb).map_err(|e| err(&e))?;
    w.finish().map_err(|e| err(&e))
}

/// Where the picture of attention `index` of graph `graph` goes, when
/// there are several: `OUT-<graph>-<index>.<ext>` next to `base`
/// (`.png` when `base` has no extension).
pub fn numbered_path(base: &Path, graph: &str, index: usize) -> PathBuf {
    let stem = base.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "mask".into());
    let ext = base.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| "png".into());
    base.with_file_name(format!("{stem}-{graph}-{index}.{ext}"))
}

/// The line `tdlc masks` prints for a picture written to `path`.
pub fn summary_line(p: &Picture, path: &Path, graph: &str, index: usize, mask: &str) -> String {
    let mut line = format!(
        "{}: graph {graph}, attention {index}, mask {mask}, T×S {}×{}, head {} of {}, picture {}×{}, tiles {}×{}: {} full, {} partial, {} empty of {}",
        path.display(),
        p.t,
        p.s,
        p.head,
        p.heads,
        p.width,
        p.height,
        p.tile_q,
        p.tile_k,
        p.tiles_full,
        p.tiles_partial,
        p.tiles_empty,
        p.tiles_total
    );
    match p.density {
        Some(d) => line.push_str(&format!(", density {d:.4}")),
        None if !p.drawn_entries => line
            .push_str(&format!("; entries not drawn (T·S = {} > 2^26): tile classes only", p.t as u128 * p.s as u128)),
        None => {}
    }
    line
}
