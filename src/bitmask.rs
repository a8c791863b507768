//! `BitMask`: which elements of a rows x cols matrix are kept, one bit each.

use serde::{Deserialize, Serialize};

/// A row-major bit mask: `ceil(cols / 32)` u32 words a row, bit `j` of word `w` of row `r` is
/// element (r, 32 w + j). This is the layout the GPU kernels write (docs/layout.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitMask {
    rows: usize,
    cols: usize,
    words: Vec<u32>,
}

impl BitMask {
    /// An all-zero mask (nothing kept).
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self { rows, cols, words: vec![0; rows * cols.div_ceil(32)] }
    }

    /// Wraps packed words (as the GPU writes them); `None` if the word count does not fit.
    pub fn from_words(rows: usize, cols: usize, words: Vec<u32>) -> Option<Self> {
        (words.len() == rows * cols.div_ceil(32)).then_some(Self { rows, cols, words })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn words(&self) -> &[u32] {
        &self.words
    }
    fn words_per_row(&self) -> usize {
        self.cols.div_ceil(32)
    }

    pub fn get(&self, r: usize, c: usize) -> bool {
        self.words[r * self.words_per_row() + c / 32] >> (c % 32) & 1 == 1
    }

    pub fn set(&mut self, r: usize, c: usize, keep: bool) {
        let i = r * self.words_per_row() + c / 32;
        if keep {
            self.words[i] |= 1 << (c % 32);
        } else {
            self.words[i] &= !(1 << (c % 32));
        }
    }

    /// The mask of the transposed matrix.
    pub fn transpose(&self) -> Self {
        let mut t = Self::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                if self.get(r, c) {
                    t.set(c, r, true);
                }
            }
        }
        t
    }

    /// Number of kept elements.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// True when every run of four columns of every row keeps exactly two.
    pub fn is_24_rows(&self) -> bool {
        self.cols % 4 == 0
            && (0..self.rows).all(|r| {
                (0..self.cols / 4).all(|q| (0..4).filter(|&j| self.get(r, 4 * q + j)).count() == 2)
            })
    }
}
