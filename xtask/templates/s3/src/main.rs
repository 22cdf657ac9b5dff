//! Lambda entry point: the function's table from the environment
//! (`{{NAME}}_TABLE`, key `pk` + `sk`: the objects recorded), then the
//! toolkit's SQS consumer of the bucket's notifications, which reads
//! `IDEMPOTENCY_TABLE`, `QUARANTINE_TABLE` and its optional settings
//! (`shared::config::Settings`); `infra/stack.json` declares them.

fn main() -> Result<(), shared::Error> {
    let table = shared::config::required("{{NAME}}_TABLE")?;
    shared::sqs("{{name}}", move |notification| {{crate}}::plan(&table, &notification))
}
