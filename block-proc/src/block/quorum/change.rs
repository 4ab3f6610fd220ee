//! `x-blockdev-change`: remove a child of a node or add a node as a new
//! child, with QEMU's checks in QEMU's order (`qmp_x_blockdev_change`,
//! `bdrv_add_child`, `bdrv_del_child`, `quorum_add_child`,
//! `quorum_del_child`). Only quorum nodes support it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::Node;
use super::QuorumError;

/// Whether `from` or a node below it is `target`.
fn reaches(nodes: &BTreeMap<String, Arc<Node>>, from: &Node, target: &str) -> bool {
    if from.name == target {
        return true;
    }
    from.driver
        .children()
        .iter()
        .filter_map(|c| nodes.get(c))
        .any(|c| reaches(nodes, c, target))
}

/// Applies the change; returns the name of the node a removal let go of
/// (its parent reference is already dropped).
pub fn change_child(
    nodes: &BTreeMap<String, Arc<Node>>,
    parent: &str,
    child: Option<&str>,
    node: Option<&str>,
) -> Result<Option<String>, QuorumError> {
    let p = nodes
        .get(parent)
        .ok_or_else(|| QuorumError::NoParent(parent.to_owned()))?;
    match (child, node) {
        (Some(_), Some(_)) => Err(QuorumError::ChildAndNode),
        (None, None) => Err(QuorumError::NeitherChildNorNode),
        (Some(c), None) => remove(p, parent, c).map(Some),
        (None, Some(n)) => add(nodes, p, parent, n).map(|()| None),
    }
}

fn remove(p: &Node, parent: &str, child: &str) -> Result<String, QuorumError> {
    let missing = || QuorumError::NoSuchChild {
        parent: parent.to_owned(),
        child: child.to_owned(),
    };
    let Some(q) = p.driver.as_quorum() else {
        // raw and qcow2 nodes have one child, named `file`.
        if child == "file" && !p.driver.children().is_empty() {
            return Err(QuorumError::CannotRemove(parent.to_owned()));
        }
        return Err(missing());
    };
    if q.child(child).is_none() {
        return Err(missing());
    }
    let gone = q.remove_child(child)?;
    gone.release();
    Ok(gone.name.clone())
}

fn add(
    nodes: &BTreeMap<String, Arc<Node>>,
    p: &Arc<Node>,
    parent: &str,
    name: &str,
) -> Result<(), QuorumError> {
    let new = nodes
        .get(name)
        .ok_or_else(|| QuorumError::NoNode(name.to_owned()))?;
    let Some(q) = p.driver.as_quorum() else {
        return Err(QuorumError::CannotAdd(parent.to_owned()));
    };
    if new.in_use() {
        return Err(QuorumError::HasParent(name.to_owned()));
    }
    if q.is_blkverify() {
        return Err(QuorumError::BlkverifyAdd);
    }
    if reaches(nodes, new, parent) {
        return Err(QuorumError::Cycle {
            node: name.to_owned(),
            child: q.next_child_name(),
            parent: parent.to_owned(),
        });
    }
    q.add_child(new.clone(), p.read_only)?;
    new.acquire();
    Ok(())
}
