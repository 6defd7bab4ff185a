//! A small stroke font, so that figures need no font file: every glyph is a
//! few polylines on a grid 4 units wide, baseline at 0, capitals 6 high,
//! lower case 4 high, descenders to -2. Text becomes line segments that any
//! backend draws the same way (a PNG and its SVG twin look alike), and no
//! machine needs fonts installed.

/// Horizontal advance of one glyph, in grid units (4 of ink, 1 of space).
pub const ADVANCE: f64 = 5.0;
/// Height of a capital, in grid units.
pub const CAP: f64 = 6.0;

/// The strokes of `c`: polylines separated by `;`, points `x,y`. Characters
/// without a glyph are drawn as a box.
fn strokes(c: char) -> &'static str {
    match c {
        '0' => "1,0 3,0 4,1 4,5 3,6 1,6 0,5 0,1 1,0; 0.5,1 3.5,5",
        '1' => "1,5 2,6 2,0; 1,0 3,0",
        '2' => "0,5 1,6 3,6 4,5 4,4 0,0 4,0",
        '3' => "0,5 1,6 3,6 4,5 4,4 3,3 1.5,3; 3,3 4,2 4,1 3,0 1,0 0,1",
        '4' => "3,0 3,6 0,2 4,2",
        '5' => "4,6 0,6 0,3.5 3,3.5 4,2.5 4,1 3,0 0,0",
        '6' => "3.5,6 1,6 0,5 0,1 1,0 3,0 4,1 4,2.5 3,3.5 0,3.5",
        '7' => "0,6 4,6 1.5,0",
        '8' => "1,3 0,4 0,5 1,6 3,6 4,5 4,4 3,3 1,3 0,2 0,1 1,0 3,0 4,1 4,2 3,3",
        '9' => "4,3 1,3 0,4 0,5 1,6 3,6 4,5 4,1 3,0 0.5,0",
        'A' => "0,0 0,4 2,6 4,4 4,0; 0,2.5 4,2.5",
        'B' => "0,0 0,6 3,6 4,5 4,4 3,3 0,3; 3,3 4,2 4,1 3,0 0,0",
        'C' => "4,5 3,6 1,6 0,5 0,1 1,0 3,0 4,1",
        'D' => "0,0 0,6 2,6 4,4 4,2 2,0 0,0",
        'E' => "4,6 0,6 0,0 4,0; 0,3 3,3",
        'F' => "4,6 0,6 0,0; 0,3 3,3",
        'G' => "4,5 3,6 1,6 0,5 0,1 1,0 3,0 4,1 4,3 2,3",
        'H' => "0,0 0,6; 4,0 4,6; 0,3 4,3",
        'I' => "1,6 3,6; 2,6 2,0; 1,0 3,0",
        'J' => "1,6 4,6; 3,6 3,1 2,0 1,0 0,1",
        'K' => "0,0 0,6; 4,6 0,2; 1.3,3.3 4,0",
        'L' => "0,6 0,0 4,0",
        'M' => "0,0 0,6 2,3 4,6 4,0",
        'N' => "0,0 0,6 4,0 4,6",
        'O' => "1,0 3,0 4,1 4,5 3,6 1,6 0,5 0,1 1,0",
        'P' => "0,0 0,6 3,6 4,5 4,4 3,3 0,3",
        'Q' => "1,0 3,0 4,1 4,5 3,6 1,6 0,5 0,1 1,0; 2.5,1.5 4,0",
        'R' => "0,0 0,6 3,6 4,5 4,4 3,3 0,3; 2,3 4,0",
        'S' => "4,5 3,6 1,6 0,5 0,4 1,3 3,3 4,2 4,1 3,0 1,0 0,1",
        'T' => "0,6 4,6; 2,6 2,0",
        'U' => "0,6 0,1 1,0 3,0 4,1 4,6",
        'V' => "0,6 2,0 4,6",
        'W' => "0,6 1,0 2,3 3,0 4,6",
        'X' => "0,0 4,6; 0,6 4,0",
        'Y' => "0,6 2,3 4,6; 2,3 2,0",
        'Z' => "0,6 4,6 0,0 4,0",
        'a' => "0.5,4 3,4 4,3 4,0; 4,2 1,2 0,1 1,0 3,0 4,1",
        'b' => "0,6 0,0 3,0 4,1 4,3 3,4 0,4",
        'c' => "4,4 1,4 0,3 0,1 1,0 4,0",
        'd' => "4,6 4,0 1,0 0,1 0,3 1,4 4,4",
        'e' => "0,2 4,2 4,3 3,4 1,4 0,3 0,1 1,0 4,0",
        'f' => "4,6 2.5,6 1.5,5 1.5,0; 0,4 3.5,4",
        'g' => "4,4 4,-1 3,-2 0.5,-2; 4,4 1,4 0,3 0,1 1,0 4,0",
        'h' => "0,6 0,0; 0,4 3,4 4,3 4,0",
        'i' => "1,4 2,4 2,0; 1,0 3,0; 2,5.3 2,6",
        'j' => "2,4 3,4 3,-1 2,-2 0.5,-2; 3,5.3 3,6",
        'k' => "0,6 0,0; 0,1.5 3.5,4; 1.3,2.4 4,0",
        'l' => "1,6 2,6 2,0; 1,0 3,0",
        'm' => "0,0 0,4; 0,3 1,4 2,3 2,0; 2,3 3,4 4,3 4,0",
        'n' => "0,0 0,4; 0,3 1,4 3,4 4,3 4,0",
        'o' => "1,0 3,0 4,1 4,3 3,4 1,4 0,3 0,1 1,0",
        'p' => "0,-2 0,4 3,4 4,3 4,1 3,0 0,0",
        'q' => "4,-2 4,4 1,4 0,3 0,1 1,0 4,0",
        'r' => "0,0 0,4; 0,2.5 1.5,4 4,4",
        's' => "4,4 1,4 0,3 1,2 3,2 4,1 3,0 0,0",
        't' => "1.5,6 1.5,1 2.5,0 4,0; 0,4 3.5,4",
        'u' => "0,4 0,1 1,0 3,0 4,1; 4,4 4,0",
        'v' => "0,4 2,0 4,4",
        'w' => "0,4 1,0 2,2.5 3,0 4,4",
        'x' => "0,0 4,4; 0,4 4,0",
        'y' => "0,4 2,0; 4,4 1,-2",
        'z' => "0,4 4,4 0,0 4,0",
        '.' => "1.7,0 2.3,0 2.3,0.6 1.7,0.6 1.7,0",
        ',' => "2.3,0.6 2.3,0 1.5,-1.2",
        ':' => "2,0 2,0.6; 2,3.4 2,4",
        ';' => "2,3.4 2,4; 2.3,0.6 2.3,0 1.5,-1.2",
        '-' => "1,3 3,3",
        '+' => "0,3 4,3; 2,1 2,5",
        '=' => "0,2 4,2; 0,4 4,4",
        '/' => "0.5,0 3.5,6",
        '(' => "3,6.5 1.5,5 1.5,1 3,-0.5",
        ')' => "1,6.5 2.5,5 2.5,1 1,-0.5",
        '[' => "3,6.5 1.5,6.5 1.5,-0.5 3,-0.5",
        ']' => "1,6.5 2.5,6.5 2.5,-0.5 1,-0.5",
        '%' => "0,0 4,6; 0.5,5.5 1,5.5 1,5 0.5,5 0.5,5.5; 3,1 3.5,1 3.5,0.5 3,0.5 3,1",
        '_' => "0,-1 4,-1",
        '\'' => "2,6 2,4.5",
        '<' => "4,5 0,3 4,1",
        '>' => "0,5 4,3 0,1",
        '!' => "2,6 2,2; 2,0 2,0.6",
        '?' => "0,5 1,6 3,6 4,5 4,4 2,3 2,2; 2,0 2,0.6",
        '#' => "1,0 1.5,6; 2.5,0 3,6; 0,2 4,2; 0,4 4,4",
        '*' => "2,1.5 2,4.5; 0.7,2.2 3.3,3.8; 0.7,3.8 3.3,2.2",
        '\u{b1}' => "0,4 4,4; 2,2 2,6; 0,0.5 4,0.5",
        ' ' => "",
        _ => "0,0 4,0 4,6 0,6 0,0",
    }
}

/// The polylines of `c` in grid units.
pub fn glyph(c: char) -> Vec<Vec<(f64, f64)>> {
    strokes(c)
        .split(';')
        .map(|line| {
            line.split_whitespace()
                .filter_map(|p| {
                    let (x, y) = p.split_once(',')?;
                    Some((x.parse().ok()?, y.parse().ok()?))
                })
                .collect::<Vec<_>>()
        })
        .filter(|l| l.len() >= 2)
        .collect()
}

/// Width of `text` in grid units (the last glyph's trailing space dropped).
pub fn width(text: &str) -> f64 {
    let n = text.chars().count() as f64;
    if n == 0.0 { 0.0 } else { n * ADVANCE - 1.0 }
}

/// The polylines of `text` laid out from the origin along the baseline, in
/// grid units (y up).
pub fn layout(text: &str) -> Vec<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    for (i, c) in text.chars().enumerate() {
        let dx = i as f64 * ADVANCE;
        out.extend(glyph(c).into_iter().map(|l| l.into_iter().map(|(x, y)| (x + dx, y)).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_printable_ascii_glyph_parses_within_its_box() {
        for c in (' '..='~').chain(['\u{b1}']) {
            let s = strokes(c);
            let lines = glyph(c);
            let points: usize = s.split(';').map(|l| l.split_whitespace().count()).sum();
            let parsed: usize = lines.iter().map(Vec::len).sum();
            if !s.is_empty() {
                assert_eq!(points, parsed, "{c:?}: every point parses");
            }
            for (x, y) in lines.into_iter().flatten() {
                assert!((0.0..=4.0).contains(&x) && (-2.0..=6.5).contains(&y), "{c:?}: ({x}, {y})");
            }
        }
        assert_eq!(width("ab"), 9.0);
        assert_eq!(layout("a b").len(), glyph('a').len() + glyph('b').len());
    }
}
