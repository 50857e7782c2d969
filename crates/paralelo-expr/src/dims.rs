//! An iteration space's dimensions merged where every operand allows it: what the CPU walk
//! and the CUDA kernels index by (a contiguous array of any shape is one dimension).

/// `shape` with its dimensions merged, and each operand's strides (in bytes, one list per
/// operand, each as long as `shape`) along the merged ones. Dimensions of length 1 are
/// dropped; two neighbours merge where every operand steps over the inner one exactly
/// as the outer one steps. `rows`: the last dimension stays one of its own, whatever its
/// length (the axis a reduction folds). An empty or 0-d space is one dimension of its
/// size, every stride 0.
pub fn merged(shape: &[usize], operands: &[&[isize]], rows: bool) -> (Vec<usize>, Vec<Vec<isize>>) {
    let mut dims: Vec<usize> = Vec::new();
    let mut strides: Vec<Vec<isize>> = vec![Vec::new(); operands.len()];
    let last = shape.len().wrapping_sub(1);
    let own = |d: usize| rows && d == last;
    for d in (0..shape.len()).filter(|&d| shape[d] != 1 || own(d)) {
        let mergeable = !dims.is_empty()
            && !own(d)
            && operands.iter().enumerate().all(|(k, s)| {
                s[d] * shape[d] as isize == *strides[k].last().expect("a dimension was kept")
            });
        if mergeable {
            // (the previous dimension, `d` of them at a time, walks on as one)
            let n = dims.len() - 1;
            for (k, s) in operands.iter().enumerate() {
                strides[k][n] = s[d];
            }
            dims[n] *= shape[d];
        } else {
            dims.push(shape[d]);
            for (k, s) in operands.iter().enumerate() {
                strides[k].push(s[d]);
            }
        }
    }
    if dims.is_empty() || shape.contains(&0) {
        dims = vec![shape.iter().product()];
        strides = vec![vec![0]; operands.len()];
    }
    (dims, strides)
}

#[cfg(test)]
mod tests {
    use super::merged;

    #[test]
    fn contiguous_merges_to_one_dimension_and_a_transpose_does_not() {
        let c: &[isize] = &[96, 32, 8];
        assert_eq!(
            merged(&[2, 3, 4], &[c, c], false),
            (vec![24], vec![vec![8], vec![8]])
        );
        let t: &[isize] = &[8, 16, 48];
        assert_eq!(merged(&[2, 3, 4], &[c, t], false).0, vec![2, 3, 4]);
        // A broadcast operand (stride 0) merges with itself.
        let b: &[isize] = &[0, 0, 8];
        assert_eq!(
            merged(&[2, 3, 4], &[b], false),
            (vec![6, 4], vec![vec![0, 8]])
        );
        assert_eq!(merged(&[], &[&[]], false), (vec![1], vec![vec![0]]));
        assert_eq!(merged(&[3, 0], &[&[8, 8]], false), (vec![0], vec![vec![0]]));
    }

    #[test]
    fn a_reductions_axis_stays_its_own_even_of_length_one() {
        // sum(x, axis=1) over a (5, 1) array: five rows of one element.
        let x: &[isize] = &[8, 8];
        let out: &[isize] = &[8, 0];
        assert_eq!(
            merged(&[5, 1], &[x, out], true),
            (vec![5, 1], vec![vec![8, 8], vec![8, 0]])
        );
        let c: &[isize] = &[32, 8];
        let row_out: &[isize] = &[0, 0];
        assert_eq!(merged(&[1, 4], &[c, row_out], true).0, vec![4]);
    }
}
