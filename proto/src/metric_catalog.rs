//! What a metric catalog is made of, for the node's (`ringcache-server`) and the client's
//! (`ringcache`) catalogs alike: the metric names, types and labels are a contract with the
//! dashboards and alerts built on them, like the wire types are with the other side.
//!
//! A catalog is one [`metric_catalog!`](macro@crate::metric_catalog) invocation: each entry gives a
//! family's handle name, type, Prometheus name, unit, labels (with their values where those are
//! a closed set) and help text, and becomes a typed static ([`Def<CounterKind>`],
//! [`Def<GaugeKind>`] or [`Def<HistogramKind>`]), so a handle of the wrong type does not compile;
//! the invocation also makes `CATALOG`, the list of every entry.

use std::marker::PhantomData;

pub use metrics::Unit;

/// A metric family's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Samples in buckets (`_bucket`, `_sum`, `_count`).
    Histogram,
}

impl Kind {
    /// The name in a `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The values a label takes.
#[derive(Debug, Clone, Copy)]
pub enum Values {
    /// Exactly these.
    Closed(&'static [&'static str]),
    /// A bounded set too large or too dynamic to list; the text says what it is.
    Open(&'static str),
}

/// A label of a metric family.
#[derive(Debug, Clone, Copy)]
pub struct LabelDef {
    /// The label name.
    pub name: &'static str,
    /// Its values.
    pub values: Values,
}

/// A label whose values are exactly `values`.
pub const fn closed(name: &'static str, values: &'static [&'static str]) -> LabelDef {
    LabelDef {
        name,
        values: Values::Closed(values),
    }
}

/// A label whose values are described by `what`.
pub const fn open(name: &'static str, what: &'static str) -> LabelDef {
    LabelDef {
        name,
        values: Values::Open(what),
    }
}

/// One metric family.
#[derive(Debug)]
pub struct MetricDef {
    /// The Prometheus name (`ringcache_*`).
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its unit, if it has one.
    pub unit: Option<Unit>,
    /// Its labels, in the order handles give their values.
    pub labels: &'static [LabelDef],
    /// The `# HELP` text.
    pub help: &'static str,
}

/// Marks a [`Def`] of a counter.
#[derive(Debug)]
pub struct CounterKind;
/// Marks a [`Def`] of a gauge.
#[derive(Debug)]
pub struct GaugeKind;
/// Marks a [`Def`] of a histogram.
#[derive(Debug)]
pub struct HistogramKind;

/// A catalog entry typed by its kind, so a handle of another type cannot be made from it.
#[derive(Debug)]
pub struct Def<K> {
    /// The entry.
    pub def: MetricDef,
    kind: PhantomData<K>,
}

impl<K> Def<K> {
    /// An entry; made by [`metric_catalog!`](macro@crate::metric_catalog).
    #[doc(hidden)]
    pub const fn new(def: MetricDef) -> Self {
        Def {
            def,
            kind: PhantomData,
        }
    }
}

impl<K> std::ops::Deref for Def<K> {
    type Target = MetricDef;
    fn deref(&self) -> &MetricDef {
        &self.def
    }
}

/// Declares a catalog: one typed static per entry and `CATALOG`, every entry in declaration
/// order.
///
/// ```
/// use ringcache_proto::metric_catalog::closed;
///
/// ringcache_proto::metric_catalog! {
///     /// Every metric of this example.
///     REQUESTS: counter "example_requests_total", Count,
///         [closed("result", &["ok", "error"])], "Requests, by result";
///     QUEUED: gauge "example_queued", none, [], "Requests waiting";
/// }
///
/// assert_eq!(CATALOG.len(), 2);
/// assert_eq!(REQUESTS.labels[0].name, "result");
/// ```
#[macro_export]
macro_rules! metric_catalog {
    (@kind counter) => { $crate::metric_catalog::CounterKind };
    (@kind gauge) => { $crate::metric_catalog::GaugeKind };
    (@kind histogram) => { $crate::metric_catalog::HistogramKind };
    (@Kind counter) => { $crate::metric_catalog::Kind::Counter };
    (@Kind gauge) => { $crate::metric_catalog::Kind::Gauge };
    (@Kind histogram) => { $crate::metric_catalog::Kind::Histogram };
    (@unit none) => { None };
    (@unit $unit:ident) => { Some($crate::metric_catalog::Unit::$unit) };
    (
        $(#[$catalog_doc:meta])*
        $(
            $ident:ident: $kind:ident $name:literal, $unit:ident, [$($label:expr),* $(,)?],
                $help:expr;
        )*
    ) => {
        $(
            #[doc = concat!("`", $name, "`")]
            pub static $ident: $crate::metric_catalog::Def<$crate::metric_catalog!(@kind $kind)> =
                $crate::metric_catalog::Def::new($crate::metric_catalog::MetricDef {
                    name: $name,
                    kind: $crate::metric_catalog!(@Kind $kind),
                    unit: $crate::metric_catalog!(@unit $unit),
                    labels: &[$($label),*],
                    help: $help,
                });
        )*
        $(#[$catalog_doc])*
        pub static CATALOG: &[&$crate::metric_catalog::MetricDef] = &[$(&$ident.def),*];
    };
}
