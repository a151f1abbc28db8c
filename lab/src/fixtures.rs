//! Deterministic fixture generation (see fixtures/README.md).
