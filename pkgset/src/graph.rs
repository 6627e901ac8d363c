//! Graph algorithms on dependency graphs, in one place: the set's invariant check and
//! graft's cycle breaking use the same cycle finder.

/// A cycle of the directed graph on nodes `0..n` with edges `edges` (from, to), as the
/// indices into `edges` of the edges that make it, in order (the first edge leaves the
/// node the last one enters); `None` if the graph has no cycle. Iterative (no recursion
/// however deep the graph), O(n + edges).
pub fn find_cycle(n: usize, edges: &[(usize, usize)]) -> Option<Vec<usize>> {
    let mut adj: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, &(from, _)) in edges.iter().enumerate() {
        adj[from].push(i);
    }
    // Depth first with colours: 0 not seen, 1 on the path, 2 done.
    let mut colour = vec![0u8; n];
    for start in 0..n {
        if colour[start] != 0 {
            continue;
        }
        // (node, next of its edges to follow), and the edges taken to get there.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        let mut path: Vec<usize> = Vec::new();
        colour[start] = 1;
        while let Some(&mut (v, ref mut k)) = stack.last_mut() {
            let Some(&e) = adj[v].get(*k) else {
                colour[v] = 2;
                stack.pop();
                path.pop();
                continue;
            };
            *k += 1;
            let w = edges[e].1;
            match colour[w] {
                0 => {
                    colour[w] = 1;
                    path.push(e);
                    stack.push((w, 0));
                }
                1 => {
                    // A back edge to w, which is on the path: the cycle is the path from
                    // w on, and this edge.
                    let from = path
                        .iter()
                        .position(|&p| edges[p].0 == w)
                        .unwrap_or(path.len());
                    let mut cycle = path[from..].to_vec();
                    cycle.push(e);
                    return Some(cycle);
                }
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nodes of a cycle found, in order, checked to be a closed walk over the edges.
    fn walk(edges: &[(usize, usize)], cycle: &[usize]) -> Vec<usize> {
        for w in cycle.windows(2) {
            assert_eq!(edges[w[0]].1, edges[w[1]].0, "edges {w:?} do not join");
        }
        let (first, last) = (edges[cycle[0]], edges[*cycle.last().unwrap()]);
        assert_eq!(last.1, first.0, "the cycle does not close");
        cycle.iter().map(|&e| edges[e].0).collect()
    }

    #[test]
    fn finds_no_cycle_in_a_dag_and_the_cycle_there_is() {
        let dag = [(0, 1), (1, 2), (0, 2), (3, 2)];
        assert_eq!(find_cycle(4, &dag), None);
        assert_eq!(find_cycle(0, &[]), None);
        let edges = [(0, 1), (1, 2), (2, 3), (3, 1), (0, 3)];
        let c = find_cycle(4, &edges).unwrap();
        let mut nodes = walk(&edges, &c);
        nodes.sort();
        assert_eq!(nodes, [1, 2, 3]);
        // A self-loop, and parallel edges (two requirements between the same packages).
        assert_eq!(find_cycle(2, &[(0, 1), (1, 1)]), Some(vec![1]));
        let c = find_cycle(2, &[(0, 1), (0, 1), (1, 0)]).unwrap();
        assert_eq!(walk(&[(0, 1), (0, 1), (1, 0)], &c).len(), 2);
    }

    #[test]
    fn a_long_chain_closing_at_its_end_needs_no_recursion() {
        let n = 200_000;
        let mut edges: Vec<(usize, usize)> = (0..n - 1).map(|i| (i, i + 1)).collect();
        edges.push((n - 1, 0));
        let c = find_cycle(n, &edges).unwrap();
        assert_eq!(c.len(), n);
        walk(&edges, &c);
    }
}
