//! Reference model and invariant checks of spiderpool-core (being written).
