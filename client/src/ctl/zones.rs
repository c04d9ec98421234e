//! Zones as ringctl reports them: which ring members are in which zone, and what the placement
//! rule makes of that (`status`, `ring`).

use std::collections::BTreeMap;

use ringcache_proto::placement::Ring;
use ringcache_proto::topology::Topology;
use serde::Serialize;

/// The name shown for the unnamed zone (members without a zone).
pub(super) const UNNAMED: &str = "(none)";

/// One zone of the ring.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(super) struct ZoneNodes {
    /// `null` for the unnamed zone (members without one).
    pub(super) zone: Option<String>,
    pub(super) nodes: Vec<String>,
    /// The sum of its nodes' weights.
    pub(super) weight: u64,
}

/// The zones of a ring and what to warn about.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(super) struct ZoneReport {
    /// Zones sorted by name, the unnamed one first.
    pub(super) zones: Vec<ZoneNodes>,
    /// Copies of each key (R capped at the ring's members).
    pub(super) replicas_per_key: usize,
    /// Zones each key's copies span: min(copies, zones).
    pub(super) zones_per_key: usize,
    /// Slot ranges whose copies share a zone while another zone holds none of them. The
    /// placement rule never makes one: anything but 0 is a bug.
    pub(super) crowded_ranges: usize,
    /// Where the zones leave copies or load uneven.
    pub(super) warnings: Vec<String>,
}

/// The zones of `topology`'s ring `ring`; `None` when no ring member has a zone.
pub(super) fn zone_report(ring: &Ring, topology: &Topology) -> Option<ZoneReport> {
    if !ring.is_zoned() {
        return None;
    }
    let mut by_zone: BTreeMap<Option<&str>, (Vec<String>, u64)> = BTreeMap::new();
    for id in ring.nodes() {
        let entry = by_zone.entry(ring.zone(id)).or_default();
        entry.0.push(id.to_string());
        entry.1 += topology.member(id).map_or(1, |m| u64::from(m.weight));
    }
    let zones: Vec<ZoneNodes> = by_zone
        .into_iter()
        .map(|(zone, (nodes, weight))| ZoneNodes {
            zone: zone.map(str::to_owned),
            nodes,
            weight,
        })
        .collect();
    let copies = ring.replication();
    let count = zones.len();
    let mut warnings = Vec::new();
    if let Some(unnamed) = zones.iter().find(|z| z.zone.is_none()) {
        warnings.push(format!(
            "{} of {} ring members have no zone ({}): they share one unnamed zone",
            unnamed.nodes.len(),
            ring.nodes().len(),
            unnamed.nodes.join(", ")
        ));
    }
    if count < copies {
        warnings.push(format!(
            "{count} zones for {copies} copies of each key: every key keeps more than one copy \
             in some zone (losing that zone loses them together)"
        ));
    }
    if count <= copies && count > 1 {
        let lightest = zones.iter().min_by_key(|z| z.weight);
        let heaviest = zones.iter().max_by_key(|z| z.weight);
        if let (Some(light), Some(heavy)) = (lightest, heaviest)
            && light.weight < heavy.weight
        {
            #[allow(clippy::cast_precision_loss)] // a ratio for display
            let ratio = heavy.weight as f64 / light.weight as f64;
            warnings.push(format!(
                "zones are uneven: with {copies} copies and {count} zones every zone holds a \
                 copy of every key, so zone {} ({} node(s), weight {}) carries as much as zone \
                 {} ({} node(s), weight {}): each of its nodes holds about {ratio:.1}× the keys \
                 of one of zone {}'s",
                zone_name(light),
                light.nodes.len(),
                light.weight,
                zone_name(heavy),
                heavy.nodes.len(),
                heavy.weight,
                zone_name(heavy),
            ));
        }
    }
    let crowded_ranges = ring.crowded_ranges();
    if crowded_ranges > 0 {
        warnings.push(format!(
            "BUG: {crowded_ranges} slot ranges keep two copies in one zone while another zone \
             holds none (the placement rule should never do this)"
        ));
    }
    Some(ZoneReport {
        zones,
        replicas_per_key: copies,
        zones_per_key: copies.min(count),
        crowded_ranges,
        warnings,
    })
}

/// A zone's name as shown.
pub(super) fn zone_name(zone: &ZoneNodes) -> &str {
    zone.zone.as_deref().unwrap_or(UNNAMED)
}

impl ZoneReport {
    /// One line naming the zones and their nodes.
    pub(super) fn summary(&self) -> String {
        let zones: Vec<String> = self
            .zones
            .iter()
            .map(|z| format!("{} ({})", zone_name(z), z.nodes.join(", ")))
            .collect();
        format!(
            "zones: {}; each key's {} copies span {} zones\n",
            zones.join("; "),
            self.replicas_per_key,
            self.zones_per_key
        )
    }
}

#[cfg(test)]
mod tests {
    use ringcache_proto::topology::Member;

    use super::*;

    fn topology(members: &[(&str, Option<&str>, u32)], replication: u32) -> Topology {
        Topology::new(
            members
                .iter()
                .map(|(id, zone, weight)| {
                    Member::for_test(*id).with_weight(*weight).with_zone(*zone)
                })
                .collect(),
            replication,
            16,
        )
    }

    fn zones_of(members: &[(&str, Option<&str>, u32)], replication: u32) -> Option<ZoneReport> {
        let topology = topology(members, replication);
        zone_report(&Ring::new(&topology), &topology)
    }

    #[test]
    fn no_zones_no_report() {
        assert_eq!(zones_of(&[("a", None, 1), ("b", None, 1)], 2), None);
    }

    #[test]
    fn balanced_zones_have_nothing_to_warn_about() {
        let report = zones_of(
            &[
                ("a1", Some("a"), 1),
                ("b1", Some("b"), 1),
                ("c1", Some("c"), 1),
                ("a2", Some("a"), 1),
                ("b2", Some("b"), 1),
                ("c2", Some("c"), 1),
            ],
            3,
        )
        .unwrap();
        assert_eq!(report.warnings, Vec::<String>::new());
        assert_eq!((report.zones_per_key, report.crowded_ranges), (3, 0));
        assert_eq!(report.zones[0].nodes, ["a1", "a2"]);
        assert_eq!(
            report.summary(),
            "zones: a (a1, a2); b (b1, b2); c (c1, c2); each key's 3 copies span 3 zones\n"
        );
        // More zones than copies: uneven zones are no problem then.
        let report = zones_of(
            &[
                ("a1", Some("a"), 1),
                ("a2", Some("a"), 1),
                ("b1", Some("b"), 1),
                ("c1", Some("c"), 1),
            ],
            2,
        )
        .unwrap();
        assert_eq!(report.warnings, Vec::<String>::new());
    }

    #[test]
    fn mixed_too_few_and_uneven_zones_are_warned_about() {
        let mixed = zones_of(&[("a1", Some("a"), 1), ("n1", None, 1), ("n2", None, 1)], 2).unwrap();
        assert!(
            mixed.warnings[0].starts_with("2 of 3 ring members have no zone (n1, n2)"),
            "{:?}",
            mixed.warnings
        );
        assert_eq!(mixed.zones[0].zone, None, "the unnamed zone first");

        let few = zones_of(
            &[
                ("a1", Some("a"), 1),
                ("a2", Some("a"), 1),
                ("b1", Some("b"), 1),
                ("b2", Some("b"), 1),
            ],
            3,
        )
        .unwrap();
        assert_eq!(few.zones_per_key, 2);
        assert_eq!(few.warnings.len(), 1, "{:?}", few.warnings);
        assert!(few.warnings[0].starts_with("2 zones for 3 copies of each key"));

        let uneven = zones_of(
            &[
                ("a1", Some("a"), 1),
                ("b1", Some("b"), 1),
                ("b2", Some("b"), 1),
                ("c1", Some("c"), 1),
                ("c2", Some("c"), 1),
            ],
            3,
        )
        .unwrap();
        assert_eq!(uneven.warnings.len(), 1, "{:?}", uneven.warnings);
        assert!(
            uneven.warnings[0].contains("zone a (1 node(s), weight 1)")
                && uneven.warnings[0].contains("about 2.0× the keys"),
            "{}",
            uneven.warnings[0]
        );
        assert_eq!(uneven.crowded_ranges, 0);
    }
}
