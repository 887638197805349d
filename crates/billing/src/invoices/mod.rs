//! Invoices, the one owner of the `invoices` and `invoice_lines` tables: the runs that
//! make them ([`run`], spread over job workers by [`fan_out`]), their creation ([`store`]), where collecting each stands
//! ([`payment`]), how the API reads them ([`view`]) and their reconciliation with usage
//! ([`reconciliation`]), and what a tenant's data export and erasure do to them
//! ([`personal_data`]), and what the operator overview shows of them ([`overview`]). No other module of the crate names these tables in SQL (a test
//! checks it).

mod fan_out;
mod overview;
pub(crate) mod payment;
pub mod personal_data;
mod reconciliation;
mod run;
mod store;
mod view;

pub use fan_out::{FanOut, InvoiceRunner, InvoiceTenantsJob, fan_out};
pub use overview::{Revenue, UnpaidInvoice, revenue_by_month, unpaid};
pub use payment::{close, mark_paid};
pub use reconciliation::{MAX_PAGE, Mismatch, Page, Reconciliation, reconcile};
pub use run::{Collection, RunError, RunReport, run};
pub(crate) use store::store;
pub use store::{InvoiceKind, NewInvoice, record_signup_invoice, signup_invoice_id};
pub use view::{Invoice, PaymentState, QuantityText, StoredLine, get, list};

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("the crate's sources") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }

    /// The words that make SQL name a table, followed by one of ours.
    fn names_our_tables(source: &str) -> bool {
        let words: Vec<&str> = source
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        words.windows(2).any(|pair| {
            matches!(pair[0], "FROM" | "JOIN" | "UPDATE" | "INTO")
                && matches!(pair[1], "invoices" | "invoice_lines")
        })
    }

    #[test]
    fn no_module_outside_invoices_names_their_tables_in_sql() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let owner = src.join("invoices");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let trespassers: Vec<_> = files
            .iter()
            .filter(|path| !path.starts_with(&owner))
            .filter(|path| names_our_tables(&std::fs::read_to_string(path).unwrap()))
            .collect();
        assert!(trespassers.is_empty(), "SQL on invoices in {trespassers:?}");
        // And the check sees what it looks for.
        assert!(names_our_tables("\"UPDATE invoices SET status = $1\""));
        assert!(!names_our_tables("the invoices of a tenant"));
    }
}
