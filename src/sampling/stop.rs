//! Stop strings over streamed text: hold back what could still become a stop string.

/// What [`StopMatcher::push`] releases.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopResult {
    /// Text that is now safe to emit (never contains, nor ends inside, a stop string).
    pub emit: String,
    /// A stop string was found: `emit` is the text before it and generation must end.
    pub stopped: bool,
}

/// Finds stop strings in a stream of text deltas (one per request; not shared between threads).
///
/// Text is held back while its tail could still be the beginning of a stop string, so a stop
/// string is never emitted even when it spans several deltas; it is released as soon as it
/// cannot. On a match, the text before the earliest occurrence is emitted and everything from
/// the stop string on is dropped. Works on `&str`, so every cut is on a char boundary.
/// Empty stop strings are ignored ([`crate::sampling::SamplingParams::validate`] refuses them).
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    max_len: usize,
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for the given stop strings (copied).
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let max_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            max_len,
            pending: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has been found.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds the next delta of generated text. After a stop, further calls return an empty,
    /// stopped result.
    pub fn push(&mut self, delta: &str) -> StopResult {
        if self.stopped {
            return StopResult {
                emit: String::new(),
                stopped: true,
            };
        }
        self.pending.push_str(delta);
        if let Some(at) = self.earliest_match() {
            self.pending.truncate(at);
            self.stopped = true;
            return StopResult {
                emit: std::mem::take(&mut self.pending),
                stopped: true,
            };
        }
        let hold = self.hold_from();
        let rest = self.pending.split_off(hold);
        StopResult {
            emit: std::mem::replace(&mut self.pending, rest),
            stopped: false,
        }
    }

    /// Ends the stream: returns the held-back text (empty after a stop).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.pending)
    }

    /// Byte offset of the earliest occurrence of any stop string in `pending`.
    fn earliest_match(&self) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
    }

    /// The first char boundary from which the rest of `pending` is a proper prefix of a stop
    /// string (`pending.len()` if none). Only the last `max_len - 1` bytes can qualify.
    fn hold_from(&self) -> usize {
        let start = self
            .pending
            .len()
            .saturating_sub(self.max_len.saturating_sub(1));
        self.pending
            .char_indices()
            .map(|(i, _)| i)
            .filter(|&i| i >= start)
            .find(|&i| {
                let tail = self.pending.get(i..).unwrap_or("");
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len())
    }
}
