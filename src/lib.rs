//! tdl facade
