//! Generations of the embedded index: `<root>/g{n}` directories, the live one named by
//! `<root>/CURRENT`. A rebuild opens the next generation beside the live one; promoting
//! it replaces `CURRENT` atomically (write, sync, rename) and removes the old
//! generation's directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use shopagent_domain::ports::{IndexError, IndexGenerations, OfferIndex};

use super::EmbeddedIndex;

/// The file naming the live generation.
const CURRENT: &str = "CURRENT";

fn unavailable(error: impl std::fmt::Display) -> IndexError {
    IndexError::Unavailable(error.to_string())
}

/// Where the embedded index keeps its generations: a directory, or memory.
#[derive(Debug)]
pub struct EmbeddedGenerations {
    root: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    live: u64,
    next: Option<(u64, Arc<EmbeddedIndex>)>,
}

fn generation(root: &Path, number: u64) -> PathBuf {
    root.join(format!("g{number}"))
}

/// The generation numbers of the directories under `root`.
fn generations(root: &Path) -> std::io::Result<Vec<u64>> {
    Ok(std::fs::read_dir(root)?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .filter_map(|entry| entry.file_name().to_str()?.strip_prefix('g')?.parse().ok())
        .collect())
}

impl EmbeddedGenerations {
    /// The live generation under `root` (the first one for a new directory), opened.
    pub fn open(root: &Path) -> Result<(EmbeddedIndex, Self), IndexError> {
        std::fs::create_dir_all(root).map_err(unavailable)?;
        let live = match std::fs::read_to_string(root.join(CURRENT)) {
            Ok(name) => name
                .trim()
                .strip_prefix('g')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| unavailable(format!("{CURRENT} names no generation: {name:?}")))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Self::remove_loose_files(root);
                write_current(root, 1)?;
                1
            }
            Err(error) => return Err(unavailable(error)),
        };
        let index = EmbeddedIndex::open(&generation(root, live))?;
        let generations = Self {
            root: Some(root.to_owned()),
            state: Mutex::new(State { live, next: None }),
        };
        generations.remove_retired();
        Ok((index, generations))
    }

    /// Generations in memory: each new one starts empty.
    pub fn in_memory() -> Self {
        Self {
            root: None,
            state: Mutex::new(State::default()),
        }
    }

    /// An index written before generations existed kept its files in `root` itself: it
    /// is rebuilt from the log, like any index, into the first generation.
    fn remove_loose_files(root: &Path) {
        let Ok(entries) = std::fs::read_dir(root) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.path().is_file() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Generations neither live nor being built (a rebuild cut short, a promotion whose
    /// clean-up did not finish).
    fn remove_retired(&self) {
        let Some(root) = &self.root else { return };
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let building = state.next.as_ref().map(|(n, _)| *n);
        for number in generations(root).unwrap_or_default() {
            if number != state.live
                && Some(number) != building
                && let Err(error) = std::fs::remove_dir_all(generation(root, number))
            {
                tracing::warn!(%error, generation = number, "retired search index generation not removed");
            }
        }
    }
}

fn write_current(root: &Path, number: u64) -> Result<(), IndexError> {
    let temporary = root.join(format!("{CURRENT}.tmp"));
    let mut file = std::fs::File::create(&temporary).map_err(unavailable)?;
    std::io::Write::write_all(&mut file, format!("g{number}\n").as_bytes()).map_err(unavailable)?;
    file.sync_all().map_err(unavailable)?;
    std::fs::rename(&temporary, root.join(CURRENT)).map_err(unavailable)?;
    // The rename itself is durable once the directory is.
    std::fs::File::open(root)
        .and_then(|directory| directory.sync_all())
        .map_err(unavailable)
}

#[async_trait::async_trait]
impl IndexGenerations for EmbeddedGenerations {
    async fn create_next(&self) -> Result<Arc<dyn OfferIndex>, IndexError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.next = None;
        let (number, index) = match &self.root {
            None => (state.live + 1, EmbeddedIndex::in_memory()?),
            Some(root) => {
                let number = generations(root)
                    .map_err(unavailable)?
                    .into_iter()
                    .chain([state.live])
                    .max()
                    .unwrap_or(0)
                    + 1;
                (number, EmbeddedIndex::open(&generation(root, number))?)
            }
        };
        let index = Arc::new(index);
        state.next = Some((number, Arc::clone(&index)));
        Ok(index)
    }

    async fn promote(&self) -> Result<Arc<dyn OfferIndex>, IndexError> {
        let (number, index) = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let (number, index) = state
                .next
                .take()
                .ok_or_else(|| unavailable("no new generation to promote"))?;
            if let Some(root) = &self.root {
                write_current(root, number)?;
            }
            state.live = number;
            (number, index)
        };
        self.remove_retired();
        tracing::info!(generation = number, "search index generation promoted");
        Ok(index)
    }
}
