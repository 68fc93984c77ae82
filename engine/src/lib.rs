//! Proctor: a durable process engine.
//!
//! Layers, inside out: [`definition`] (typed, validated process files) and [`expr`]
//! (CEL templates); [`core`], the pure execution state machine; the ports [`clock`],
//! [`network`], [`store`] and the injected RNG; [`agent`] (the HTTP agent protocol over the
//! Network port); and [`driver`], the async shell that feeds inputs to the core and performs
//! its commands. See ARCHITECTURE.md for the rules between them.

pub mod core;
pub mod definition;
pub mod event;
pub mod expr;
