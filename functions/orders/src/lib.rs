//! The orders pipeline's domain, the toolkit's reference user: order events
//! (the input contract of DESIGN.md), the apply rule, the contribution rule
//! for customer totals, and the state table that holds orders and totals.
//!
//! [`order`] is pure and platform-neutral (the Cloudflare Worker builds it
//! for wasm32 with `default-features = false`); the rest, behind the `aws`
//! feature, is how those rules persist in DynamoDB through the toolkit's
//! public API.
#![deny(missing_docs)]

pub mod order;

#[cfg(feature = "aws")]
pub mod config;
#[cfg(feature = "ingest")]
pub mod lines;
#[cfg(feature = "aws")]
pub mod state;
