//! `switchyard-sim`: simulated vLLM engines (docs/simulator.md). The command itself is
//! `switchyard_sim::cli`; it is built here, in the gateway's package, so that both
//! commands ship in one wheel (docs/install.md). It keeps the system allocator it had
//! as its own package's binary (the benchmarks' engines are unchanged).

fn main() -> anyhow::Result<()> {
    switchyard_sim::cli::main()
}
