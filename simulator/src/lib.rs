//! The simulator: synthetic friend graphs and activity, replayed against `presence-core`.
