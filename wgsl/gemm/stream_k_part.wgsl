// The partial tiles of a stream-K GEMM's runs that cover part of a tile (gemm/tiled.wgsl with STREAM_K,
// slots from gemm/stream_k.wgsl): its own binding after the GEMM's six, in the stream-K record only.
@group(0) @binding(7) var<storage, read_write> part: array<vec4<f32>>;
