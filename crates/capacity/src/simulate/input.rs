//! Reading a workload: Aquarium Fish's CSV (`startTime,endTime,executionTime,jobName,stageName`,
//! integer Unix seconds, UTC), plus the optional columns `pool,instanceType,zones`, streamed a
//! row at a time so memory does not grow with the file.
//!
//! Checked as it is read, each problem an error naming its line: a missing column, a missing or
//! non-integer or negative field, `endTime` ≠ `startTime + executionTime` (Fish never reads
//! `endTime`; a file where it disagrees was made wrongly), rows out of `startTime` order (Fish
//! requires the order; running them anyway would bend time), and a file with no rows.

use std::collections::HashMap;
use std::io::Read;

/// One job of the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// Its line in the file (the header is line 1).
    pub line: u64,
    pub start: u64,
    pub execution: u64,
    /// The `pool` column; empty means the default pool.
    pub pool: String,
    /// The `instanceType` column; empty means the pool's.
    pub instance_type: String,
    /// The `zones` column, `;`-separated; empty means any zone of the pool.
    pub zones: String,
}

/// One job as read, its text fields borrowed from the reader's buffer: what the simulator
/// reads, with no allocation per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobRow<'r> {
    pub line: u64,
    pub start: u64,
    pub execution: u64,
    pub pool: &'r str,
    pub instance_type: &'r str,
    pub zones: &'r str,
}

impl JobRow<'_> {
    pub fn to_job(&self) -> Job {
        Job {
            line: self.line,
            start: self.start,
            execution: self.execution,
            pool: self.pool.to_owned(),
            instance_type: self.instance_type.to_owned(),
            zones: self.zones.to_owned(),
        }
    }
}

/// A workload read whole, for several runs over the same file (`--compare`): parsed once
/// instead of once per run. Each job keeps its numbers and, for its text fields, an index into
/// the distinct values (a generated year has a handful): 40 bytes a job, 28 MB for a year.
#[derive(Debug)]
pub struct ParsedWorkload {
    jobs: Vec<ParsedJob>,
    texts: Vec<String>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct ParsedJob {
    line: u64,
    start: u64,
    execution: u64,
    pool: u32,
    instance_type: u32,
    zones: u32,
}

impl ParsedJob {
    /// The job as a row, its text fields looked up in `texts` (the distinct values so far).
    pub(crate) fn row<'t>(&self, texts: &'t [String]) -> JobRow<'t> {
        let text = |id: u32| texts[id as usize].as_str();
        JobRow {
            line: self.line,
            start: self.start,
            execution: self.execution,
            pool: text(self.pool),
            instance_type: text(self.instance_type),
            zones: text(self.zones),
        }
    }
}

impl ParsedWorkload {
    /// Reads every row; the first bad row is the error, as a streamed run would report it.
    pub fn read<R: Read>(workload: WorkloadReader<R>) -> Result<ParsedWorkload, InputError> {
        let mut batches = Batches::new(workload, usize::MAX);
        let mut whole = ParsedWorkload { jobs: Vec::new(), texts: Vec::new() };
        while let Some(batch) = batches.next_batch() {
            if let Some(error) = batch.error {
                return Err(error);
            }
            whole.jobs.extend(batch.jobs);
            whole.texts.extend(batch.texts);
        }
        Ok(whole)
    }

    /// The jobs, in the file's order.
    pub fn rows(&self) -> impl Iterator<Item = JobRow<'_>> {
        self.jobs.iter().map(|job| job.row(&self.texts))
    }
}

/// Some rows of a workload, in the file's order, parsed ([`Batches`]).
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) jobs: Vec<ParsedJob>,
    /// The distinct text values first met in this batch, numbered on from the earlier
    /// batches' (the jobs' indices count every batch's texts so far).
    pub(crate) texts: Vec<String>,
    /// The bad row that ended the workload after `jobs`: nothing more follows.
    pub(crate) error: Option<InputError>,
}

/// A workload read as batches of parsed rows: what a reading thread hands a simulation
/// (`simulate` parses on one core while it simulates on another) and what
/// [`ParsedWorkload::read`] gathers.
pub(crate) struct Batches<R: Read> {
    reader: WorkloadReader<R>,
    size: usize,
    index: HashMap<String, u32>,
    /// How many distinct values the earlier batches named.
    named: usize,
    /// Each column's value is most often the previous row's: looked up once per change.
    last: [Option<(String, u32)>; 3],
    done: bool,
}

impl<R: Read> Batches<R> {
    /// Batches of at most `size` rows.
    pub(crate) fn new(reader: WorkloadReader<R>, size: usize) -> Batches<R> {
        Batches {
            reader,
            size: size.max(1),
            index: HashMap::new(),
            named: 0,
            last: [None, None, None],
            done: false,
        }
    }

    /// The next batch; `None` once the rows ran out or a batch carried an error.
    pub(crate) fn next_batch(&mut self) -> Option<Batch> {
        if self.done {
            return None;
        }
        let mut batch = Batch {
            jobs: Vec::with_capacity(self.size.min(1 << 16)),
            texts: Vec::new(),
            error: None,
        };
        while batch.jobs.len() < self.size {
            let row = match self.reader.next_row() {
                None => {
                    self.done = true;
                    break;
                }
                Some(Err(error)) => {
                    self.done = true;
                    batch.error = Some(error);
                    break;
                }
                Some(Ok(row)) => row,
            };
            let (index, named, last) = (&mut self.index, &mut self.named, &mut self.last);
            let mut intern = |column: usize, text: &str| -> u32 {
                if let Some((value, id)) = &last[column]
                    && value == text
                {
                    return *id;
                }
                let id = *index.entry(text.to_owned()).or_insert_with(|| {
                    batch.texts.push(text.to_owned());
                    *named += 1;
                    u32::try_from(*named - 1).expect("fewer than 4 billion distinct values")
                });
                last[column] = Some((text.to_owned(), id));
                id
            };
            let job = ParsedJob {
                line: row.line,
                start: row.start,
                execution: row.execution,
                pool: intern(0, row.pool),
                instance_type: intern(1, row.instance_type),
                zones: intern(2, row.zones),
            };
            batch.jobs.push(job);
        }
        if batch.jobs.is_empty() && batch.error.is_none() {
            return None;
        }
        Some(batch)
    }
}

/// What is wrong with a workload file.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error(
        "the workload is empty: expected a header `startTime,endTime,executionTime,jobName,stageName` and at least one row"
    )]
    Empty,
    #[error("the workload has a header but no rows")]
    NoRows,
    #[error("line 1: the header has no `{column}` column (found: {found})")]
    MissingColumn { column: &'static str, found: String },
    #[error("line {line}: `{column}` is empty")]
    MissingField { line: u64, column: &'static str },
    #[error("line {line}: `{column}` is `{value}`, not a whole number of seconds")]
    NotAnInteger { line: u64, column: &'static str, value: String },
    #[error("line {line}: `{column}` is {value}, which is negative")]
    Negative { line: u64, column: &'static str, value: String },
    #[error(
        "line {line}: endTime {end} is not startTime {start} + executionTime {execution} (= {expected})"
    )]
    EndMismatch { line: u64, start: u64, end: u64, execution: u64, expected: u64 },
    #[error(
        "line {line}: startTime {start} is before the previous row's {previous} (line {previous_line}); rows must be sorted by startTime"
    )]
    Unsorted { line: u64, start: u64, previous: u64, previous_line: u64 },
    #[error("line {line}: {message}")]
    Malformed { line: u64, message: String },
}

/// The columns a workload must have, in Fish's order.
const REQUIRED: [&str; 5] = ["startTime", "endTime", "executionTime", "jobName", "stageName"];

/// Where each column is in the file.
#[derive(Debug, Clone, Copy)]
struct Columns {
    start: usize,
    end: usize,
    execution: usize,
    pool: Option<usize>,
    instance_type: Option<usize>,
    zones: Option<usize>,
}

/// A workload file, read a row at a time.
#[derive(Debug)]
pub struct WorkloadReader<R: Read> {
    reader: csv::Reader<R>,
    columns: Option<Columns>,
    record: csv::StringRecord,
    previous: Option<(u64, u64)>,
    rows: u64,
    failed: bool,
}

impl<R: Read> WorkloadReader<R> {
    pub fn new(source: R) -> WorkloadReader<R> {
        let reader =
            csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(source);
        WorkloadReader {
            reader,
            columns: None,
            record: csv::StringRecord::new(),
            previous: None,
            rows: 0,
            failed: false,
        }
    }

    fn read_header(&mut self) -> Result<Columns, InputError> {
        let found = match self.reader.read_record(&mut self.record) {
            Ok(true) => true,
            Ok(false) => false,
            Err(error) => {
                return Err(InputError::Malformed { line: 1, message: error.to_string() });
            }
        };
        if !found || self.record.iter().all(|field| field.trim().is_empty()) {
            return Err(InputError::Empty);
        }
        let names: Vec<String> = self.record.iter().map(|name| name.trim().to_owned()).collect();
        let position = |name: &str| names.iter().position(|found| found == name);
        for column in REQUIRED {
            if position(column).is_none() {
                return Err(InputError::MissingColumn { column, found: names.join(",") });
            }
        }
        let required = |name: &str| position(name).expect("checked above");
        Ok(Columns {
            start: required("startTime"),
            end: required("endTime"),
            execution: required("executionTime"),
            pool: position("pool"),
            instance_type: position("instanceType"),
            zones: position("zones"),
        })
    }

    /// Reads and checks the next row: its line, start and execution.
    fn read_row(&mut self, columns: Columns) -> Result<Option<(u64, u64, u64)>, InputError> {
        let line = loop {
            let line_guess = self.rows + 2;
            match self.reader.read_record(&mut self.record) {
                Ok(true) => {}
                Ok(false) if self.rows == 0 => return Err(InputError::NoRows),
                Ok(false) => return Ok(None),
                Err(error) => {
                    let line = error.position().map_or(line_guess, csv::Position::line);
                    return Err(InputError::Malformed { line, message: error.to_string() });
                }
            }
            let line = self.record.position().map_or(line_guess, csv::Position::line);
            // A blank line, as a trailing one, holds no job.
            let blank = self.record.len() == 1
                && self.record.get(0).is_some_and(|field| field.trim().is_empty());
            if !blank {
                break line;
            }
        };
        let start = self.integer(line, columns.start, "startTime")?;
        let end = self.integer(line, columns.end, "endTime")?;
        let execution = self.integer(line, columns.execution, "executionTime")?;
        let expected = start.checked_add(execution).ok_or(InputError::EndMismatch {
            line,
            start,
            end,
            execution,
            expected: u64::MAX,
        })?;
        if end != expected {
            return Err(InputError::EndMismatch { line, start, end, execution, expected });
        }
        if let Some((previous, previous_line)) = self.previous
            && start < previous
        {
            return Err(InputError::Unsorted { line, start, previous, previous_line });
        }
        self.previous = Some((start, line));
        self.rows += 1;
        Ok(Some((line, start, execution)))
    }

    /// The row read last, its text fields borrowed.
    fn row(&self, columns: Columns, (line, start, execution): (u64, u64, u64)) -> JobRow<'_> {
        let text = |index: Option<usize>| {
            index.and_then(|index| self.record.get(index)).unwrap_or("").trim()
        };
        JobRow {
            line,
            start,
            execution,
            pool: text(columns.pool),
            instance_type: text(columns.instance_type),
            zones: text(columns.zones),
        }
    }

    fn integer(&self, line: u64, index: usize, column: &'static str) -> Result<u64, InputError> {
        let value = self.record.get(index).unwrap_or("");
        // The common case in one pass: up to 19 plain digits cannot overflow a u64.
        if (1..=19).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(value.bytes().fold(0, |total, b| total * 10 + u64::from(b - b'0')));
        }
        let value = value.trim();
        if value.is_empty() {
            return Err(InputError::MissingField { line, column });
        }
        if let Some(magnitude) = value.strip_prefix('-')
            && !magnitude.is_empty()
            && magnitude.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        {
            return Err(InputError::Negative { line, column, value: value.to_owned() });
        }
        if !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InputError::NotAnInteger { line, column, value: value.to_owned() });
        }
        value.parse().map_err(|_| InputError::NotAnInteger {
            line,
            column,
            value: value.to_owned(),
        })
    }
}

impl<R: Read> WorkloadReader<R> {
    /// The next job, borrowed from the reader (what the simulator reads: no allocation per
    /// row); after an error, nothing more.
    pub fn next_row(&mut self) -> Option<Result<JobRow<'_>, InputError>> {
        if self.failed {
            return None;
        }
        let columns = match self.columns {
            Some(columns) => columns,
            None => match self.read_header() {
                Ok(columns) => {
                    self.columns = Some(columns);
                    columns
                }
                Err(error) => {
                    self.failed = true;
                    return Some(Err(error));
                }
            },
        };
        match self.read_row(columns) {
            Ok(Some(read)) => Some(Ok(self.row(columns, read))),
            Ok(None) => None,
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

impl<R: Read> Iterator for WorkloadReader<R> {
    type Item = Result<Job, InputError>;

    /// The next job; after an error, nothing more.
    fn next(&mut self) -> Option<Result<Job, InputError>> {
        self.next_row().map(|row| row.map(|row| row.to_job()))
    }
}
