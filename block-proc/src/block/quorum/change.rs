//! `x-blockdev-change`: remove a child of a node or add a node as a new
//! child, with QEMU's checks in QEMU's order (`qmp_x_blockdev_change`,
//! `bdrv_add_child`, `bdrv_del_child`, `quorum_add_child`,
//! `quorum_del_child`). Only quorum nodes support it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::Node;

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
) -> Result<Option<String>, String> {
    let p = nodes
        .get(parent)
        .ok_or_else(|| format!("Cannot find device='{parent}' nor node-name='{parent}'"))?;
    match (child, node) {
        (Some(_), Some(_)) => Err("The parameters child and node are in conflict".into()),
        (None, None) => Err("Either child or node must be specified".into()),
        (Some(c), None) => remove(p, parent, c).map(Some),
        (None, Some(n)) => add(nodes, p, parent, n).map(|()| None),
    }
}

fn remove(p: &Node, parent: &str, child: &str) -> Result<String, String> {
    let missing = || format!("Node '{parent}' does not have child '{child}'");
    let Some(q) = p.driver.as_quorum() else {
        // raw and qcow2 nodes have one child, named `file`.
        if child == "file" && !p.driver.children().is_empty() {
            return Err(format!(
                "The node {parent} does not support removing a child"
            ));
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
) -> Result<(), String> {
    let new = nodes
        .get(name)
        .ok_or_else(|| format!("Node '{name}' not found"))?;
    let Some(q) = p.driver.as_quorum() else {
        return Err(format!("The node {parent} does not support adding a child"));
    };
    if new.in_use() {
        return Err(format!("The node {name} already has a parent"));
    }
    if q.is_blkverify() {
        return Err("Cannot add a child to a quorum in blkverify mode".into());
    }
    if reaches(nodes, new, parent) {
        return Err(format!(
            "Making '{name}' a {} child of '{parent}' would create a cycle",
            q.next_child_name()
        ));
    }
    q.add_child(new.clone(), p.read_only)?;
    new.acquire();
    Ok(())
}
