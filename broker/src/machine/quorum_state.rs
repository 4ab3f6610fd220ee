//! Desired state of quorum nodes that `x-blockdev-change` changed: the
//! node's record keeps its current children (removed ones dropped, added
//! ones as references, in child order), and [`Layouts`] keeps their
//! `children.N` names and the next index, which QEMU derives from the
//! change history. A restarted block-proc gets the nodes in an order where
//! every referenced node exists first ([`replay_order`]), then the names
//! ([`replay_on`]).

use std::collections::{HashMap, HashSet};

use ipc_proto::block::{BlockRequest, BlockdevOptions, BlockdevRef};
use ipc_proto::FlatError;

use super::block_state::{children, state, walk_post_order, NodeRecord};
use super::{lock, BlockLink, Machine};

/// A quorum's child names and the index of the next added child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `children.N`, in child order.
    pub names: Vec<String>,
    /// The N the next added child gets.
    pub next_index: u32,
}

impl Layout {
    /// The names a quorum created with `n` children has.
    fn fresh(n: usize) -> Layout {
        Layout {
            names: (0..n).map(|i| format!("children.{i}")).collect(),
            next_index: u32::try_from(n).unwrap_or(u32::MAX),
        }
    }

    /// Removes child `name` (QEMU's `quorum_del_child` naming); returns
    /// its position.
    fn remove(&mut self, name: &str) -> Option<usize> {
        let i = self.names.iter().position(|n| n == name)?;
        if self.next_index > 0 && name == format!("children.{}", self.next_index - 1) {
            self.next_index -= 1;
        }
        self.names.remove(i);
        Some(i)
    }

    /// Adds a child (QEMU's `quorum_add_child` naming).
    fn add(&mut self) {
        self.names.push(format!("children.{}", self.next_index));
        self.next_index = self.next_index.saturating_add(1);
    }
}

/// The layouts of the quorums changed since their creation, by node name.
#[derive(Debug, Default)]
pub struct Layouts(HashMap<String, Layout>);

impl Layouts {
    /// Forgets deleted nodes.
    pub fn forget(&mut self, names: &[String]) {
        for n in names {
            self.0.remove(n);
        }
    }
}

/// The quorum options named `name` anywhere in `o` (inline included).
fn find_quorum<'a>(
    o: &'a mut BlockdevOptions,
    name: &str,
) -> Option<&'a mut ipc_proto::block::QuorumOptions> {
    match o {
        BlockdevOptions::Quorum(q) => {
            if q.node_name.as_deref() == Some(name) {
                return Some(q);
            }
            q.children.iter_mut().find_map(|c| match c {
                BlockdevRef::Definition(d) => find_quorum(d, name),
                BlockdevRef::Reference(_) => None,
            })
        }
        BlockdevOptions::Raw(r) => match r.file.as_mut() {
            Some(BlockdevRef::Definition(d)) => find_quorum(d, name),
            Some(BlockdevRef::Reference(_)) | None => None,
        },
        BlockdevOptions::Qcow2(q) => match q.file.as_mut() {
            Some(BlockdevRef::Definition(d)) => find_quorum(d, name),
            Some(BlockdevRef::Reference(_)) | None => None,
        },
        BlockdevOptions::File(_) | BlockdevOptions::NullCo(_) => None,
    }
}

/// `x-blockdev-change` on the worker, then in the desired state. Returns
/// the named nodes an inline child's removal leaves without a parent
/// (QEMU frees them; the caller deletes them in block-proc).
fn change_recorded(
    m: &Machine,
    parent: &str,
    child: Option<&str>,
    node: Option<&str>,
) -> Result<Vec<String>, FlatError> {
    let req = BlockRequest::ChangeChild {
        parent: parent.to_owned(),
        child: child.map(String::from),
        node: node.map(String::from),
    };
    crate::machine::expect_done(m.block_request(req)?)?;
    let shared = state(m);
    let mut st = lock(&shared);
    let mut layouts = std::mem::take(&mut st.quorum);
    let freed = record_change(&mut st, &mut layouts, parent, child, node);
    st.quorum = layouts;
    Ok(freed)
}

fn record_change(
    st: &mut super::block_state::BlockState,
    layouts: &mut Layouts,
    parent: &str,
    child: Option<&str>,
    node: Option<&str>,
) -> Vec<String> {
    let Some(q) = st
        .nodes_mut()
        .iter_mut()
        .find_map(|r| find_quorum(&mut r.options, parent))
    else {
        tracing::warn!("x-blockdev-change: quorum '{parent}' is not in the desired state");
        return Vec::new();
    };
    let layout = layouts
        .0
        .entry(parent.to_owned())
        .or_insert_with(|| Layout::fresh(q.children.len()));
    let mut freed = Vec::new();
    if let Some(c) = child {
        if let Some(i) = layout.remove(c) {
            if i < q.children.len() {
                if let BlockdevRef::Definition(d) = q.children.remove(i) {
                    let _ = walk_post_order::<()>(&d, &mut |o| {
                        freed.extend(o.node_name().map(String::from));
                        Ok(())
                    });
                }
            }
        }
    }
    if let Some(n) = node {
        layout.add();
        q.children.push(BlockdevRef::Reference(n.to_owned()));
    }
    freed.reverse();
    freed
}

/// The node name a child reference or definition stands for.
fn child_name(c: &BlockdevRef) -> Option<&str> {
    match c {
        BlockdevRef::Reference(n) => Some(n),
        BlockdevRef::Definition(d) => d.node_name(),
    }
}

/// QEMU's `quorum_recurse_can_replace`: `node` is a direct child of the
/// quorum `quorum` and has no other parent (no other node, no export).
pub fn can_replace(m: &Machine, quorum: &str, node: &str) -> bool {
    let shared = state(m);
    let mut st = lock(&shared);
    let is_child = st
        .nodes_mut()
        .iter_mut()
        .find_map(|r| find_quorum(&mut r.options, quorum))
        .is_some_and(|q| q.children.iter().any(|c| child_name(c) == Some(node)));
    if !is_child {
        return false;
    }
    let mut parents = 0;
    for r in st.nodes() {
        let _ = walk_post_order::<()>(&r.options, &mut |o| {
            parents += children(o)
                .into_iter()
                .filter(|c| child_name(c) == Some(node))
                .count();
            Ok(())
        });
    }
    parents == 1 && !st.exported(node)
}

/// After a mirror with `replaces` completed: `target` holds `replaced`'s
/// place among the quorum's children (same child name); a replaced inline
/// definition is freed, as in QEMU.
pub fn replaced_child(m: &Machine, quorum: &str, replaced: &str, target: &str) {
    let freed = {
        let shared = state(m);
        let mut st = lock(&shared);
        let Some(q) = st
            .nodes_mut()
            .iter_mut()
            .find_map(|r| find_quorum(&mut r.options, quorum))
        else {
            tracing::warn!("mirror: quorum '{quorum}' is not in the desired state");
            return;
        };
        let Some(c) = q
            .children
            .iter_mut()
            .find(|c| child_name(c) == Some(replaced))
        else {
            return;
        };
        let old = std::mem::replace(c, BlockdevRef::Reference(target.to_owned()));
        let mut freed = Vec::new();
        if let BlockdevRef::Definition(d) = old {
            let _ = walk_post_order::<()>(&d, &mut |o| {
                freed.extend(o.node_name().map(String::from));
                Ok(())
            });
        }
        freed.reverse();
        freed
    };
    for n in freed {
        if let Err(e) = m.block_request(BlockRequest::DelNode {
            node_name: n.clone(),
        }) {
            tracing::debug!("replaced quorum child '{n}' stays: {}", e.desc);
        }
    }
}

/// `x-blockdev-change` (serialised with the other graph changes).
pub fn change(
    m: &Machine,
    parent: &str,
    child: Option<&str>,
    node: Option<&str>,
) -> Result<(), FlatError> {
    let ops = lock(&state(m)).ops();
    let _ops = lock(&ops);
    for n in change_recorded(m, parent, child, node)? {
        let req = BlockRequest::DelNode {
            node_name: n.clone(),
        };
        if let Err(e) = m.block_request(req) {
            tracing::debug!("removed quorum child '{n}' stays: {}", e.desc);
        }
    }
    Ok(())
}

/// The order to replay `nodes` in: creation order, except that a record
/// comes after the records defining the nodes it refers to (a quorum
/// given a newer node by `x-blockdev-change`).
pub fn replay_order(nodes: &[NodeRecord]) -> Vec<usize> {
    let mut defined: HashSet<String> = HashSet::new();
    let mut done = vec![false; nodes.len()];
    let mut order = Vec::with_capacity(nodes.len());
    let refs_of = |o: &BlockdevOptions| {
        let mut own = Vec::new();
        let mut refs = Vec::new();
        let _ = walk_post_order::<()>(o, &mut |x| {
            own.extend(x.node_name().map(String::from));
            for c in children(x) {
                if let BlockdevRef::Reference(n) = c {
                    refs.push(n.clone());
                }
            }
            Ok(())
        });
        refs.retain(|r| !own.contains(r));
        (own, refs)
    };
    let info: Vec<_> = nodes.iter().map(|r| refs_of(&r.options)).collect();
    while order.len() < nodes.len() {
        let ready =
            (0..nodes.len()).find(|&i| !done[i] && info[i].1.iter().all(|r| defined.contains(r)));
        // A reference to a node no record defines (or a cycle, which the
        // worker refuses): keep creation order for the rest.
        let i = ready.unwrap_or_else(|| (0..nodes.len()).find(|&i| !done[i]).unwrap_or(0));
        done[i] = true;
        defined.extend(info[i].0.iter().cloned());
        order.push(i);
    }
    order
}

/// Gives a restarted block-proc (after its nodes) the quorums' child names.
pub fn replay_on(m: &Machine, link: &BlockLink) -> Result<(), FlatError> {
    let layouts: Vec<(String, Layout)> = lock(&state(m))
        .quorum
        .0
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (parent, l) in layouts {
        let req = BlockRequest::SetChildNames {
            parent: parent.clone(),
            names: l.names,
            next_index: l.next_index,
        };
        crate::machine::expect_done(link.request(req, &[])?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_names_follow_qemu_numbering() {
        // QEMU 10: [a, b, c]; remove children.2, add d, remove children.2,
        // remove children.0, add c -> names [children.1, children.2].
        let mut l = Layout::fresh(3);
        assert_eq!(l.remove("children.2"), Some(2));
        l.add();
        assert_eq!(l.names, ["children.0", "children.1", "children.2"]);
        assert_eq!(l.remove("children.2"), Some(2));
        assert_eq!(l.remove("children.0"), Some(0));
        l.add();
        assert_eq!(l.names, ["children.1", "children.2"]);
        assert_eq!(l.next_index, 3);
        // Removing a middle child leaves a gap; the next add goes on.
        let mut l = Layout::fresh(3);
        l.remove("children.1");
        l.add();
        assert_eq!(l.names, ["children.0", "children.2", "children.3"]);
        assert_eq!(l.remove("children.7"), None);
    }
}
