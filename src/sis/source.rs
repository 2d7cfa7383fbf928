//! Reading a OneRoster CSV export from a folder or a zip: finding its files,
//! and streaming each CSV row by row with the checks every file needs (UTF-8,
//! row length, unclosed quotes) and the header quirks real exports have.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::import::ImportError;

/// Where the CSV files of one export live.
pub(crate) enum Source {
    Dir(PathBuf),
    Zip {
        archive: Box<zip::ZipArchive<BufReader<File>>>,
        /// Lower-cased file name → entry name inside the archive.
        entries: HashMap<String, String>,
    },
}

impl Source {
    /// Opens a folder or a `.zip`. The manifest may sit at the top or inside a
    /// single sub-folder (what unzipping or zipping a folder gives).
    pub(crate) fn open(path: &Path) -> Result<Source, ImportError> {
        let io = |e| ImportError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            if path.join("manifest.csv").is_file() {
                return Ok(Source::Dir(path.to_path_buf()));
            }
            let subdirs: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir() && p.join("manifest.csv").is_file())
                .collect();
            return match subdirs.as_slice() {
                [one] => Ok(Source::Dir(one.clone())),
                _ => Err(ImportError::NotAnExport {
                    path: path.to_path_buf(),
                    reason: "no manifest.csv in the folder".into(),
                }),
            };
        }
        let file = File::open(path).map_err(io)?;
        let archive =
            zip::ZipArchive::new(BufReader::new(file)).map_err(|e| ImportError::NotAnExport {
                path: path.to_path_buf(),
                reason: format!("neither a folder nor a readable zip: {e}"),
            })?;
        let manifest = archive
            .file_names()
            .filter(|n| {
                n.rsplit('/')
                    .next()
                    .is_some_and(|f| f.eq_ignore_ascii_case("manifest.csv"))
            })
            .min_by_key(|n| n.len())
            .map(str::to_string)
            .ok_or_else(|| ImportError::NotAnExport {
                path: path.to_path_buf(),
                reason: "no manifest.csv in the zip".into(),
            })?;
        let prefix = &manifest[..manifest.len() - "manifest.csv".len()];
        let entries = archive
            .file_names()
            .filter_map(|n| {
                let rest = n.strip_prefix(prefix)?;
                (!rest.is_empty() && !rest.contains('/'))
                    .then(|| (rest.to_ascii_lowercase(), n.to_string()))
            })
            .collect();
        Ok(Source::Zip {
            archive: Box::new(archive),
            entries,
        })
    }

    /// Opens `name` (matched without regard to case), or `None` when absent.
    pub(crate) fn open_file(
        &mut self,
        name: &str,
    ) -> Result<Option<Box<dyn Read + '_>>, ImportError> {
        match self {
            Source::Dir(dir) => {
                let wanted = name.to_ascii_lowercase();
                let found = std::fs::read_dir(&*dir)
                    .map_err(|e| ImportError::Io {
                        path: dir.clone(),
                        source: e,
                    })?
                    .filter_map(|e| e.ok())
                    .find(|e| e.file_name().to_string_lossy().to_ascii_lowercase() == wanted);
                let Some(entry) = found else { return Ok(None) };
                let path = entry.path();
                let file = File::open(&path).map_err(|e| ImportError::Io {
                    path: path.clone(),
                    source: e,
                })?;
                Ok(Some(Box::new(BufReader::with_capacity(256 * 1024, file))))
            }
            Source::Zip { archive, entries } => {
                let Some(entry) = entries.get(&name.to_ascii_lowercase()) else {
                    return Ok(None);
                };
                let file = archive.by_name(entry).map_err(|e| ImportError::Csv {
                    file: name.to_string(),
                    line: 0,
                    message: format!("cannot read from zip: {e}"),
                })?;
                Ok(Some(Box::new(BufReader::with_capacity(256 * 1024, file))))
            }
        }
    }
}

/// Counts `"` bytes: a well-formed CSV has an even number, so an odd count at
/// the end means a quoted field was left open (the csv crate would otherwise
/// silently swallow the rest of the file into one field).
struct QuoteCounter<R> {
    inner: R,
    quotes: u64,
    saw_cr: bool,
}

impl<R: Read> Read for QuoteCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.quotes += buf[..n].iter().filter(|&&b| b == b'"').count() as u64;
        self.saw_cr |= buf[..n].contains(&b'\r');
        Ok(n)
    }
}

/// Canonical (lower-case) column names for header spellings seen in the wild.
pub(crate) fn canonical(name: &str) -> String {
    let lower = name
        .trim()
        .trim_start_matches('\u{feff}')
        .to_ascii_lowercase();
    match lower.as_str() {
        "datalastmodified" => "datelastmodified".into(),
        "prefferedgivenname" => "preferredgivenname".into(),
        "prefferedmiddlename" => "preferredmiddlename".into(),
        "prefferedfamilyname" => "preferredfamilyname".into(),
        _ => lower,
    }
}

/// One CSV file being streamed.
pub(crate) struct Table<'a> {
    pub file: String,
    rdr: csv::Reader<QuoteCounter<Box<dyn Read + 'a>>>,
    columns: Vec<String>,
    /// The header as written, for messages.
    written: Vec<String>,
    /// Columns up to the last one with a name; rows must have at least these.
    named: usize,
    rec: csv::ByteRecord,
    pub line: u64,
    /// Warnings about the file's shape, reported once by the caller.
    pub notes: Vec<(u64, String, String)>,
}

impl<'a> Table<'a> {
    /// Reads the header and checks that `required` columns are there.
    pub(crate) fn new(
        file: &str,
        reader: Box<dyn Read + 'a>,
        required: &[&str],
    ) -> Result<Table<'a>, ImportError> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(QuoteCounter {
                inner: reader,
                quotes: 0,
                saw_cr: false,
            });
        let mut rec = csv::ByteRecord::new();
        let got = rdr
            .read_byte_record(&mut rec)
            .map_err(|e| csv_error(file, &e))?;
        if !got {
            return Err(ImportError::MissingColumn {
                file: file.into(),
                column: required.first().unwrap_or(&"sourcedId").to_string(),
            });
        }
        let mut columns = Vec::with_capacity(rec.len());
        let mut written = Vec::with_capacity(rec.len());
        for (i, raw) in rec.iter().enumerate() {
            let text = std::str::from_utf8(raw).map_err(|_| ImportError::BadUtf8 {
                file: file.into(),
                line: 1,
                column: format!("header column {}", i + 1),
                value: String::from_utf8_lossy(raw).into_owned(),
            })?;
            columns.push(canonical(text));
            written.push(text.trim().trim_start_matches('\u{feff}').to_string());
        }
        let named = columns
            .iter()
            .rposition(|c| !c.is_empty())
            .map_or(0, |i| i + 1);
        let mut notes = Vec::new();
        if named < columns.len() {
            notes.push((
                1,
                "header".into(),
                format!(
                    "{} trailing column(s) without a name ignored",
                    columns.len() - named
                ),
            ));
        }
        let mut table = Table {
            file: file.into(),
            rdr,
            columns,
            written,
            named,
            rec,
            line: 1,
            notes,
        };
        for r in required {
            if table.col(r).is_none() {
                return Err(ImportError::MissingColumn {
                    file: file.into(),
                    column: (*r).to_string(),
                });
            }
        }
        table.rec = csv::ByteRecord::new();
        Ok(table)
    }

    /// Index of a column by its (case-insensitive) name.
    pub(crate) fn col(&self, name: &str) -> Option<usize> {
        let want = name.to_ascii_lowercase();
        self.columns.iter().position(|c| *c == want)
    }

    /// Columns whose name contains `part` (e.g. `language` in `metadata.*`).
    pub(crate) fn cols_containing(&self, part: &str) -> Vec<usize> {
        (0..self.columns.len())
            .filter(|&i| self.columns[i].contains(part))
            .collect()
    }

    pub(crate) fn column_name(&self, i: usize) -> &str {
        self.written.get(i).map_or("?", String::as_str)
    }

    /// Advances to the next row; `false` at the end of the file.
    pub(crate) fn next(&mut self) -> Result<bool, ImportError> {
        let got = self
            .rdr
            .read_byte_record(&mut self.rec)
            .map_err(|e| csv_error(&self.file, &e))?;
        if !got {
            if self.rdr.get_ref().quotes % 2 == 1 {
                return Err(ImportError::UnclosedQuote {
                    file: self.file.clone(),
                    line: self.line,
                });
            }
            return Ok(false);
        }
        // With CRLF endings csv-core reports a record as starting on the
        // previous line (its position is taken before the `\n` is eaten).
        let crlf = u64::from(self.rdr.get_ref().saw_cr);
        self.line = self
            .rec
            .position()
            .map_or(self.line + 1, |p| p.line() + crlf);
        // A blank line (a lone field with nothing in it) is not a record.
        if self.rec.len() == 1 && self.rec.get(0).is_some_and(|f| f.is_empty()) && self.named > 1 {
            return self.next();
        }
        if let Err(e) = std::str::from_utf8(self.rec.as_slice()) {
            let bad = e.valid_up_to();
            let idx = (0..self.rec.len())
                .find(|&i| self.rec.range(i).is_some_and(|r| r.end > bad))
                .unwrap_or(0);
            return Err(ImportError::BadUtf8 {
                file: self.file.clone(),
                line: self.line,
                column: self.column_name(idx).to_string(),
                value: String::from_utf8_lossy(self.rec.get(idx).unwrap_or_default()).into_owned(),
            });
        }
        if self.rec.len() < self.named {
            // A quote left open swallows the rest of the file into one field.
            let mut rest = csv::ByteRecord::new();
            let at_end = self.rdr.get_ref().quotes % 2 == 1
                && !self.rdr.read_byte_record(&mut rest).unwrap_or(true);
            if at_end {
                return Err(ImportError::UnclosedQuote {
                    file: self.file.clone(),
                    line: self.line,
                });
            }
            return Err(ImportError::ShortRow {
                file: self.file.clone(),
                line: self.line,
                expected: self.named,
                found: self.rec.len(),
                column: self.column_name(self.rec.len()).to_string(),
            });
        }
        if self.rec.len() > self.columns.len() {
            let extra = (self.columns.len()..self.rec.len())
                .find(|&i| self.rec.get(i).is_some_and(|f| !f.is_empty()));
            if let Some(i) = extra {
                return Err(ImportError::InvalidValue {
                    file: self.file.clone(),
                    line: self.line,
                    field: format!("column {} (beyond the header)", i + 1),
                    value: self.get(Some(i)).to_string(),
                    reason: "the row has more fields than the header; columns may be shifted"
                        .into(),
                });
            }
            let note = format!(
                "{} fields against a {}-column header; trailing empty field ignored",
                self.rec.len(),
                self.columns.len()
            );
            self.notes.push((self.line, "row".into(), note));
        }
        Ok(true)
    }

    /// Canonical (lower-case) names of the header's columns, unnamed ones as "".
    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The header as written.
    pub(crate) fn written(&self) -> &[String] {
        &self.written
    }

    /// The trimmed text of a column in the current row ("" when absent).
    pub(crate) fn get(&self, col: Option<usize>) -> &str {
        col.and_then(|i| self.rec.get(i))
            .and_then(|b| std::str::from_utf8(b).ok())
            .map_or("", str::trim)
    }
}

fn csv_error(file: &str, e: &csv::Error) -> ImportError {
    let line = e.position().map_or(0, |p| p.line());
    ImportError::Csv {
        file: file.into(),
        line,
        message: e.to_string(),
    }
}
