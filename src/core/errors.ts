/**
 * Error classes of the library. Every message names the operation and the offending
 * shapes, keys or values, so a user can act on it without reading our source.
 * @module
 */

/** Base class of every error this library throws on purpose. */
export class LoraError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** Shapes that do not fit an operation (mismatched dims, bad reshape, out-of-range axis). */
export class ShapeError extends LoraError {}

/** A dtype an operation or device cannot take (f16 without `shader-f16`, f64 on WebGPU, mixed dtypes). */
export class DTypeError extends LoraError {}

/** Device problems: no adapter, device lost, out of memory, size limits, mixed devices, disposed tensors. */
export class DeviceError extends LoraError {}

/** Malformed files: safetensors, JSON, configs. */
export class FormatError extends LoraError {}

/** Bad options, unsupported PEFT features, patterns that match nothing. */
export class ConfigError extends LoraError {}

/**
 * Misuse of the autograd graph: backward from a tensor that needs no gradient, `requiresGrad_` on a
 * computed (non-leaf) tensor, a `tidy` body that returns a Promise. A ConfigError, since the call is set
 * up wrong (nothing about the device or the data is at fault).
 */
export class AutogradError extends ConfigError {}
