//! The torture test: a long seeded random run of scenario-language lines
//! against an independent model ([`model`]), each line run through the
//! console engine exactly as a script's would be.
//!
//! `pagelab.mode=torture pagelab.torture=SEED,OPS` generates OPS operations
//! ([`ops::Generator`]); `pagelab.torture=replay` runs the op lines of the
//! initrd instead (what `./qemu-run.sh torture` shrinks a divergence with).
//! After every op the driver asks the model which lines check what the op
//! changed (`check` with the expected byte, `query` of what is known,
//! `checkpin`), runs them too, and compares every outcome (carried out,
//! refused, assertion held or not) with the model's. Every 64 ops it checks
//! every page of every process, every 1,000 ops it runs `invariants`; at
//! the end every handle is released, every process exits and every user
//! frame and table page must have come back.
//!
//! With `pagelab.fail-alloc=PPM[,SEED]` allocations fail while an op line
//! runs (never while an assertion does). An op refused with `out of memory`
//! while failures were injected is an injected failure: it is run again
//! without injection (Linux's mprotect, munmap and fork may have done part
//! of their work; a retry completes it) and must then do what the model
//! says. Anything else that differs is a divergence.
//!
//! The last line is `torture: N ops, M divergences, K injected failures`.
pub mod model;
pub mod ops;

#[cfg(target_os = "none")]
pub use driver::run;

#[cfg(target_os = "none")]
mod driver {
    use alloc::string::String;
    use alloc::vec::Vec;

    use super::model::{Expect, Model};
    use super::ops::{Generator, Machine, Op};
    use crate::arch::aarch64::granule::PAGE_SIZE;
    use crate::console::commands::{LineResult, Session};
    use crate::kmain::boot;
    use crate::mm::fail_alloc;
    use crate::mm::frame::{self, Owner};
    use crate::mm::layout::phys_to_virt;
    use crate::println;

    /// Ops between two full checks of every page.
    const FULL_CHECK_EVERY: u64 = 64;
    const INVARIANTS_EVERY: u64 = 1000;

    /// Where the ops come from.
    enum Source {
        Generate { seed: u64, ops: u64 },
        Replay(Vec<Op>),
    }

    struct Run {
        s: Session,
        model: Model,
        mach: Machine,
        injecting: bool,
        /// Print every line as a script line (`script: ...`).
        script: bool,
        verbose: bool,
        injected: u64,
        /// The op index and line that diverged, and how.
        divergence: Option<(u64, String, String)>,
    }

    fn show(r: &LineResult) -> String {
        match r {
            LineResult::Done => "carried out".into(),
            LineResult::Passed => "assertion held".into(),
            LineResult::Failed(w) => alloc::format!("assertion failed: {w}"),
            LineResult::Refused(e) => alloc::format!("refused: {e}"),
        }
    }

    fn agrees(e: Expect, r: &LineResult) -> bool {
        matches!(
            (e, r),
            (Expect::Ok, LineResult::Done)
                | (Expect::Refused, LineResult::Refused(_))
                | (Expect::Pass, LineResult::Passed)
                | (Expect::Fail, LineResult::Failed(_))
        )
    }

    impl Run {
        /// The line as a script reproduces it: refusals with `!`; an
        /// assertion the model expects to fail as the plain access it makes.
        fn script_line(&self, op: &Op, e: Expect) -> Option<String> {
            let line = op.render(&self.mach);
            match (e, op) {
                (Expect::Refused, _) => Some(alloc::format!("!{line}")),
                (Expect::Fail, Op::ExpectFault { p, r, page, write }) => Some(
                    Op::Touch { p: *p, r: *r, at: super::ops::Span { first: *page, n: 1 }, write: *write, skew: false }
                        .render(&self.mach),
                ),
                (Expect::Fail, Op::Check { p, r, at, .. }) => {
                    Some(Op::Touch { p: *p, r: *r, at: *at, write: false, skew: false }.render(&self.mach))
                }
                (Expect::Fail, _) => None,
                _ => Some(line),
            }
        }

        /// Runs one line; records a divergence (op index `i`) when the
        /// kernel does not do what the model says. `inject`: under
        /// allocation-failure injection.
        fn line(&mut self, i: u64, op: &Op, inject: bool) -> bool {
            let line = op.render(&self.mach);
            let backup = (inject && self.injecting).then(|| self.model.clone());
            let want = self.model.apply(op);
            if self.verbose {
                println!("torture: {i}: {line}  (model: {want:?})");
            }
            let before = fail_alloc::injected();
            let was = fail_alloc::arm(inject && self.injecting);
            let mut got = self.s.exec(&line);
            fail_alloc::arm(was);
            let injected = fail_alloc::injected() - before;
            self.injected += injected;
            if injected > 0 {
                println!("torture: op {i}: {injected} injected allocation failure(s): `{line}`: {}", show(&got));
            }
            let mut want = want;
            if injected > 0
                && let (LineResult::Refused(e), Some(b)) = (&got, backup)
                && e.contains("out of memory")
            {
                // An injected failure, cleanly refused: the same line again,
                // without injection, must do what the model says (even when
                // the model expects a refusal too: its partial effects, as a
                // write's pages before the one that faults, must be there).
                self.model = b;
                want = self.model.apply(op);
                got = fail_alloc::unarmed(|| self.s.exec(&line));
            }
            if self.script
                && let Some(l) = self.script_line(op, want)
            {
                println!("script: {l}");
            }
            if agrees(want, &got) {
                return true;
            }
            let how = alloc::format!("the model says {want:?}, the kernel: {}", show(&got));
            self.divergence = Some((i, line, how));
            false
        }

        /// An op and the assertions that follow it.
        fn step(&mut self, i: u64, op: &Op) -> bool {
            // Assertions never run under injected failures: an access that
            // fails for lack of memory would pass an `expect-fault`.
            if !self.line(i, op, !op.is_assertion()) {
                return false;
            }
            // Each batch is derived from the model as the previous one left
            // it: reads fault pages in, which changes what a query may say.
            let mut checks = Vec::new();
            self.model.assertions_after(op, &mut checks);
            if !checks.iter().all(|c| self.line(i, c, false)) {
                return false;
            }
            checks.clear();
            if (i + 1).is_multiple_of(FULL_CHECK_EVERY) {
                self.model.full_check(&mut checks);
            }
            if (i + 1).is_multiple_of(INVARIANTS_EVERY) {
                checks.push(Op::Invariants);
            }
            checks.iter().all(|c| self.line(i, c, false))
        }

        /// Every handle released, every process gone.
        fn wind_down(&mut self, i: u64) -> bool {
            for h in self.model.live_handles() {
                if !self.line(i, &Op::Unpin { h }, false) {
                    return false;
                }
            }
            for p in self.model.live_procs() {
                if !self.line(i, &Op::Exit { p }, false) {
                    return false;
                }
            }
            true
        }
    }

    /// User frames and page-table frames in use (what must come back).
    fn in_use() -> (u64, u64) {
        let s = frame::stats();
        (s.by_owner[Owner::UserAnon as usize], s.by_owner[Owner::PageTable as usize])
    }

    /// Why an op list cannot be replayed.
    enum ReplayError {
        NoInitrd,
        NotText,
        /// Line `0` (from 1) is not an op this driver writes.
        BadLine(usize, String),
    }

    impl core::fmt::Display for ReplayError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self {
                ReplayError::NoInitrd => write!(f, "replay mode but no op list was passed as the initrd"),
                ReplayError::NotText => write!(f, "the op list is not text"),
                ReplayError::BadLine(n, l) => write!(f, "line {n}: not a torture op: {l}"),
            }
        }
    }

    /// The op lines of the initrd (`torture-op: LINE` or plain lines).
    fn replay_ops(mach: &Machine) -> Result<Vec<Op>, ReplayError> {
        let r = boot().board.initrd.ok_or(ReplayError::NoInitrd)?;
        // SAFETY: the initrd is reserved RAM, mapped by the linear map.
        let text =
            unsafe { core::slice::from_raw_parts(phys_to_virt(r.start).as_u64() as *const u8, r.size() as usize) };
        let text = core::str::from_utf8(text).map_err(|_| ReplayError::NotText)?;
        let mut out = Vec::new();
        for (n, l) in text.lines().enumerate() {
            let l = l.trim();
            let l = l.strip_prefix("torture-op:").map(str::trim).unwrap_or(l);
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let op = Op::parse(l, mach).ok_or_else(|| ReplayError::BadLine(n + 1, String::from(l)))?;
            out.push(op);
        }
        Ok(out)
    }

    /// Runs the torture test as the bootargs say; returns the number of
    /// divergences (0 or 1: the run stops at the first).
    pub fn run() -> u64 {
        let b = boot();
        let Some((pfn_base, _)) = crate::mm::memory::pfn_pool() else {
            println!("torture: this machine has no PFN pool (RAM too small)");
            println!("torture: 0 ops, 1 divergences, 0 injected failures");
            return 1;
        };
        let mach =
            Machine { page: PAGE_SIZE, pfn_base: pfn_base.as_u64(), max_order: crate::mm::memory::max_folio_order() };
        let arg = b.board.bootarg("pagelab.torture").unwrap_or("1,20000");
        let src = if arg == "replay" {
            match replay_ops(&mach) {
                Ok(v) => Source::Replay(v),
                Err(e) => {
                    println!("torture: {e}");
                    println!("torture: 0 ops, 1 divergences, 0 injected failures");
                    return 1;
                }
            }
        } else {
            let mut it = arg.split(',').map(crate::util::parse_number);
            match (it.next().flatten(), it.next().flatten(), it.next()) {
                (Some(seed), Some(ops), None) => Source::Generate { seed, ops },
                _ => {
                    println!("torture: pagelab.torture={arg}: expected SEED,OPS or replay");
                    println!("torture: 0 ops, 1 divergences, 0 injected failures");
                    return 1;
                }
            }
        };
        let mut run = Run {
            s: Session::new(true),
            model: Model::new(),
            mach,
            injecting: fail_alloc::rate() > 0,
            script: b.board.bootarg("pagelab.torture-script") == Some("1"),
            verbose: b.board.bootarg("pagelab.torture-verbose") == Some("1"),
            injected: 0,
            divergence: None,
        };
        let start = in_use();
        let (mut generator, total, list) = match src {
            Source::Generate { seed, ops } => {
                println!(
                    "torture: seed {seed}, {ops} ops, granule {}K, {} ppm of allocations fail",
                    PAGE_SIZE / 1024,
                    fail_alloc::rate()
                );
                let mut g = Generator::new(seed, mach);
                g.one_page_writes = run.injecting;
                (Some(g), ops, Vec::new())
            }
            Source::Replay(v) => {
                println!("torture: replaying {} ops", v.len());
                (None, v.len() as u64, v)
            }
        };
        if run.script {
            println!("script: # torture reproducer (granule {}K)", PAGE_SIZE / 1024);
        }
        let mut history: Vec<Op> = Vec::new();
        let mut done = 0;
        while done < total {
            let op = match &mut generator {
                Some(g) => g.next(&run.model),
                None => list[done as usize],
            };
            if history.try_reserve(1).is_ok() {
                history.push(op);
            }
            let ok = run.step(done, &op);
            done += 1;
            if !ok {
                break;
            }
            if done.is_multiple_of(10_000) {
                println!("torture: {done} ops, {} injected failures", run.injected);
            }
        }
        if run.divergence.is_none() && run.wind_down(done) {
            // Named memfds live as long as the kernel; the torture test's go now.
            for f in 0..super::model::MAX_FILES {
                let _ = crate::mm::shmem::remove_unmapped(&alloc::format!("tf{f}"));
            }
            let end = in_use();
            if end != start {
                run.divergence = Some((
                    done,
                    String::from("(end of run)"),
                    alloc::format!(
                        "user frames {} -> {}, page-table frames {} -> {}: not everything came back",
                        start.0,
                        end.0,
                        start.1,
                        end.1
                    ),
                ));
            } else if let Err(e) = crate::console::commands::invariants().map_err(String::from) {
                run.divergence = Some((done, String::from("invariants"), e));
            }
        }
        let m = u64::from(run.divergence.is_some());
        if let Some((i, line, how)) = &run.divergence {
            match &generator {
                Some(g) => println!("torture: DIVERGENCE at op {i} (seed {}): `{line}`: {how}", g.seed),
                None => println!("torture: DIVERGENCE at op {i}: `{line}`: {how}"),
            }
            println!("torture: the ops up to it, for ./qemu-run.sh torture --replay FILE:");
            for op in &history {
                println!("torture-op: {}", op.render(&mach));
            }
            println!("torture: end of ops");
        }
        println!("torture: {done} ops, {m} divergences, {} injected failures", run.injected);
        m
    }
}
