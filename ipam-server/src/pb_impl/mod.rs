//! Protobuf ⇄ domain conversions, a file per type (STYLE.md: protobuf types stop at the edge).
