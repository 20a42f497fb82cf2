//! Rollback for multi-step commands: each completed step registers how to
//! undo itself; unless the command commits, the steps are undone in
//! reverse order when the guard drops (on `?` or a panic alike).

use anyhow::Result;

type Step<'a> = Box<dyn FnOnce() -> Result<()> + 'a>;

#[derive(Default)]
pub struct Undo<'a> {
    steps: Vec<(String, Step<'a>)>,
}

impl<'a> Undo<'a> {
    pub fn push(&mut self, what: impl Into<String>, step: impl FnOnce() -> Result<()> + 'a) {
        self.steps.push((what.into(), Box::new(step)));
    }

    /// Keeps everything: the command succeeded.
    pub fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        while let Some((what, step)) = self.steps.pop() {
            if let Err(e) = step() {
                eprintln!("ebpfcni: rollback: {what}: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn undoes_in_reverse_unless_committed() {
        let log = RefCell::new(Vec::new());
        {
            let mut u = Undo::default();
            u.push("a", || {
                log.borrow_mut().push("a");
                Ok(())
            });
            u.push("b", || {
                log.borrow_mut().push("b");
                anyhow::bail!("b failed but a still runs")
            });
        }
        assert_eq!(*log.borrow(), ["b", "a"]);
        let mut u = Undo::default();
        u.push("c", || {
            log.borrow_mut().push("c");
            Ok(())
        });
        u.commit();
        assert_eq!(log.borrow().len(), 2);
    }
}
