// Every Worker's entry module on the toolkit's Workers adapter: the queue
// event to the wasm module's `queue` export (`shared_workers::export_queue!`;
// wasm-bindgen's `--target module` output in ./pkg, which instantiates the
// wasm module when imported). `cargo xtask build-worker` copies this file next
// to each Worker's ./pkg (target/cf-worker/, target/inventory-reservations-worker/).
import * as rust from "./pkg/index.js";

export default {
  async queue(batch, env, ctx) {
    return rust.queue(batch, env, ctx);
  },
};
