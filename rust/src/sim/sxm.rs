//! SXM data movement on one byte plane (docs/isa.md section 4). All functions write `out[..lanes]`.

/// `out[l] = in[l - n]`, zero where `l - n` is outside the vector.
pub fn shift(input: &[u8], n: i32, out: &mut [u8]) {
    let lanes = out.len() as i64;
    for l in 0..lanes {
        let src = l - n as i64;
        out[l as usize] = if (0..lanes).contains(&src) { input[src as usize] } else { 0 };
    }
}

/// `out[l] = in[map[l]]`, zero where `map[l] >= lanes`. `map` is the u16 map group as two byte planes.
pub fn permute(input: &[u8], map: &[u8], out: &mut [u8]) {
    let lanes = out.len();
    for l in 0..lanes {
        let m = map[l] as usize | (map[lanes + l] as usize) << 8;
        out[l] = if m < lanes { input[m] } else { 0 };
    }
}

/// In every superlane g: `out[16g + i] = in[16g + m_i]`, `m_i = 255` gives 0.
pub fn distribute(input: &[u8], m: &[u8; 16], out: &mut [u8]) {
    for (l, o) in out.iter_mut().enumerate() {
        let base = l - l % 16;
        let mi = m[l % 16];
        *o = if mi == 255 { 0 } else { input[base + mi as usize] };
    }
}

/// 16 planes in, 16 out: `out_j[16g + i] = in_i[16g + j]`. Planes are `lanes` bytes each, consecutive.
pub fn transpose(input: &[u8], lanes: usize, out: &mut [u8]) {
    for j in 0..16 {
        for g in 0..lanes / 16 {
            for i in 0..16 {
                out[j * lanes + 16 * g + i] = input[i * lanes + 16 * g + j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves() {
        let input: Vec<u8> = (0..32).collect();
        let mut out = vec![0u8; 32];
        shift(&input, 3, &mut out);
        assert_eq!(&out[..5], &[0, 0, 0, 0, 1]);
        shift(&input, -3, &mut out);
        assert_eq!(out[0], 3);
        assert_eq!(out[31], 0);
        let map16: Vec<u16> = (0..32).map(|l| if l == 0 { 999 } else { 31 - l }).collect();
        let mut map: Vec<u8> = map16.iter().map(|m| *m as u8).collect();
        map.extend(map16.iter().map(|m| (*m >> 8) as u8));
        permute(&input, &map, &mut out);
        assert_eq!(&out[..3], &[0, 30, 29]);
        let mut m = [0u8; 16];
        m[1] = 255;
        m[2] = 15;
        distribute(&input, &m, &mut out);
        assert_eq!(&out[16..19], &[16, 0, 31]);
        let planes: Vec<u8> = (0..16 * 32).map(|x| (x % 251) as u8).collect();
        let mut t = vec![0u8; 16 * 32];
        transpose(&planes, 32, &mut t);
        let mut back = vec![0u8; 16 * 32];
        transpose(&t, 32, &mut back);
        assert_eq!(back, planes);
        assert_eq!(t[1 * 32 + 16 + 2], planes[2 * 32 + 16 + 1]);
    }
}
