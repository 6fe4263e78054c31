//! The storage-side generation gate (invariant 4, ARCHITECTURE.md).
//!
//! Owns, for one image on one storage node, the highest generation seen and
//! whether it is durable. An operation carrying a lower generation is refused
//! with [`Fenced`]; a higher one must be persisted on the node before the
//! operation is applied, so that a restart cannot forget it and let a zombie
//! writer back in.
//!
//! ```text
//!              op(g > durable)            persisted(g)
//!   Stable(d) ----------------> Persisting{d, g} ----------> Stable(g)
//!      |  op(g == d): Proceed       |  op(g' < g): Fenced
//!      |  op(g < d):  Fenced        |  op(g' == g): AwaitPersist
//!                                   |  op(g' > g): PersistFirst(g'), pending = g'
//! ```
//!
//! Knows nothing of where the generation is persisted.

use std::collections::BTreeMap;

use blockmap::types::ImageName;

use super::units::Generation;

/// The operation carries an older generation than this node has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fenced: op generation {seen} is below {current}")]
pub struct Fenced {
    /// The generation the operation carried.
    pub seen: Generation,
    /// The highest generation this node has seen for the image.
    pub current: Generation,
}

/// What to do with an operation that passed the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Apply it now.
    Proceed,
    /// Persist generation `G` durably, call [`GenerationGate::persisted`],
    /// then apply the operation.
    PersistFirst(Generation),
    /// Generation `G` is being persisted already: apply the operation once
    /// [`GenerationGate::persisted`] was called for it.
    AwaitPersist(Generation),
}

/// The gate state (see the module diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Stable(Generation),
    Persisting {
        durable: Generation,
        pending: Generation,
    },
}

/// The generation gate of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationGate {
    gate: Gate,
}

impl GenerationGate {
    /// A gate that recovered `durable` from the node's disk (0 when new).
    pub fn recover(durable: Generation) -> Self {
        GenerationGate {
            gate: Gate::Stable(durable),
        }
    }

    /// The highest generation seen, durable or not.
    pub fn highest(&self) -> Generation {
        match self.gate {
            Gate::Stable(g) => g,
            Gate::Persisting { pending, .. } => pending,
        }
    }

    /// The highest durable generation.
    pub fn durable(&self) -> Generation {
        match self.gate {
            Gate::Stable(g) | Gate::Persisting { durable: g, .. } => g,
        }
    }

    /// Checks an operation carrying generation `g`.
    pub fn check(&mut self, g: Generation) -> Result<Admission, Fenced> {
        let current = self.highest();
        if g < current {
            return Err(Fenced { seen: g, current });
        }
        match self.gate {
            Gate::Stable(d) if g == d => Ok(Admission::Proceed),
            Gate::Persisting { pending, .. } if g == pending => Ok(Admission::AwaitPersist(g)),
            _ => {
                self.gate = Gate::Persisting {
                    durable: self.durable(),
                    pending: g,
                };
                Ok(Admission::PersistFirst(g))
            }
        }
    }

    /// Generation `g` is durable. A stale completion (for a generation below
    /// the pending one) only raises the durable value.
    pub fn persisted(&mut self, g: Generation) {
        self.gate = match self.gate {
            Gate::Persisting { pending, .. } if g >= pending => Gate::Stable(g),
            Gate::Persisting { durable, pending } => Gate::Persisting {
                durable: durable.max(g),
                pending,
            },
            Gate::Stable(d) => Gate::Stable(d.max(g)),
        };
    }
}

/// The gates of every image a node stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fences {
    gates: BTreeMap<ImageName, GenerationGate>,
}

impl Fences {
    /// No image known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The gate of `image`, created at generation 0 if unknown.
    pub fn gate(&mut self, image: &ImageName) -> &mut GenerationGate {
        self.gates
            .entry(image.clone())
            .or_insert_with(|| GenerationGate::recover(Generation(0)))
    }

    /// Checks an operation on `image` carrying generation `g`.
    pub fn check(&mut self, image: &ImageName, g: Generation) -> Result<Admission, Fenced> {
        self.gate(image).check(g)
    }
}
