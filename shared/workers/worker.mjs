// The Worker's entry module: the queue handler of the Rust Worker
// (wasm-bindgen's `--target module` output in ./pkg, which instantiates the
// wasm module when imported). `cargo xtask build-worker` copies this file next
// to ./pkg in target/cf-worker/.
import * as rust from "./pkg/index.js";

export default {
  async queue(batch, env, ctx) {
    return rust.queue(batch, env, ctx);
  },
};
