//! A key-value state machine: string keys, `u64` values, put/get/delete/compare-and-set.

use super::StateMachine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use synod_core::{codec, LogIndex};

/// A command on [`KvStateMachine`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Read a key (through ReadIndex, or through the log).
    Get {
        /// The key.
        key: String,
    },
    /// Set a key.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: u64,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: String,
    },
    /// Set `key` to `new` if it holds `expected` (`None`: absent).
    Cas {
        /// The key.
        key: String,
        /// The value the key must hold.
        expected: Option<u64>,
        /// The value to write.
        new: u64,
    },
}

/// What a [`KvCommand`] returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOutput {
    /// The value read (`None`: absent).
    Value(Option<u64>),
    /// A put or delete took effect.
    Done,
    /// Whether a compare-and-set swapped.
    Swapped(bool),
}

/// An in-memory map from string keys to `u64` values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStateMachine {
    map: BTreeMap<String, u64>,
}

impl KvStateMachine {
    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.map.get(key).copied()
    }
}

impl StateMachine for KvStateMachine {
    type Command = KvCommand;
    type Output = KvOutput;

    fn apply(&mut self, _index: LogIndex, command: &KvCommand) -> KvOutput {
        match command {
            KvCommand::Get { key } => KvOutput::Value(self.get(key)),
            KvCommand::Put { key, value } => {
                self.map.insert(key.clone(), *value);
                KvOutput::Done
            }
            KvCommand::Delete { key } => {
                self.map.remove(key);
                KvOutput::Done
            }
            KvCommand::Cas { key, expected, new } => {
                let swapped = self.get(key) == *expected;
                if swapped {
                    self.map.insert(key.clone(), *new);
                }
                KvOutput::Swapped(swapped)
            }
        }
    }

    fn read(&self, command: &KvCommand) -> KvOutput {
        match command {
            KvCommand::Get { key } => KvOutput::Value(self.get(key)),
            // A write sent down the read path changes nothing.
            KvCommand::Put { .. } | KvCommand::Delete { .. } => KvOutput::Done,
            KvCommand::Cas { .. } => KvOutput::Swapped(false),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        codec::encode(&self.map)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.map = codec::decode(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}
