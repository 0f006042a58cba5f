//! An invoice as a printable HTML page.

use super::*;

/// A readable page of an invoice.
pub fn html(invoice: &Invoice) -> String {
    let e = escape;
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Invoice {id}</title>\
         <style>body{{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}}\
         table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:.4em;text-align:left;vertical-align:top}}\
         td.n,th.n{{text-align:right;white-space:nowrap}}small{{color:#666}}.total td{{font-weight:bold}}</style></head><body>\
         <h1>Invoice {id}</h1><p>Period {period}: {from} to {to} &middot; <b>{state}</b>{closed}</p>",
        id = e(&invoice.id),
        period = e(&invoice.period),
        from = format_utc(invoice.starts_at),
        to = format_utc(invoice.ends_at),
        state = e(&invoice.state),
        closed = invoice.closed_at.map(|c| format!(" at {}", format_utc(c))).unwrap_or_default(),
    );
    let to = &invoice.bill_to;
    let _ = write!(
        page,
        "<h2>Bill to</h2><p>{}<br>{}<br>{}{}</p>",
        e(if to.name.is_empty() { &invoice.tenant } else { &to.name }),
        e(&to.address).replace('\n', "<br>"),
        if to.tax_id.is_empty() { String::new() } else { format!("Tax id {}<br>", e(&to.tax_id)) },
        e(&to.email),
    );
    page.push_str("<table><tr><th>Charge</th><th>How</th><th class=\"n\">Amount</th></tr>");
    for line in &invoice.lines {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}<br><small>{}</small></td><td class=\"n\">{}</td></tr>",
            e(&line.description),
            e(&line.explanation),
            line.sources.iter().map(|s| e(s)).collect::<Vec<_>>().join("<br>"),
            e(&line.formatted)
        );
    }
    if invoice.lines.is_empty() {
        page.push_str("<tr><td colspan=\"3\">No charges in this period.</td></tr>");
    }
    let label = match invoice.accrued_until {
        Some(at) => format!("So far (to {})", format_utc(at)),
        None => "Total".to_string(),
    };
    for total in &invoice.totals {
        let _ = write!(
            page,
            "<tr class=\"total\"><td>{}</td><td></td><td class=\"n\">{}</td></tr>",
            e(&label),
            e(&total.formatted)
        );
    }
    for total in invoice.projected.iter().flatten() {
        let _ = write!(
            page,
            "<tr><td>Projected to the end of the month, if nothing changes</td><td></td><td class=\"n\">{}</td></tr>",
            e(&total.formatted)
        );
    }
    let _ = write!(page, "</table><p><small>Rounding: {}.</small></p></body></html>", e(&invoice.rounding));
    page
}

pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
