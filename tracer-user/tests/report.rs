//! Postmortem reports from a recorded lab trace: Markdown with every section, and an HTML
//! page that parses, is self-contained, and holds the SVG timeline and every verdict.
use std::path::Path;

use upstrace::output::report::Report;

fn report() -> Report {
    Report::from_trace(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/lab-mix.trace.jsonl")).unwrap()
}

#[test]
fn markdown_has_window_totals_causes_upstreams_worst_minute_and_examples() {
    let r = report();
    let md = r.markdown();
    for section in [
        "# upstrace report",
        "- Window:",
        "## Totals by class",
        "## Causes",
        "## Top upstreams",
        "## Worst minute",
        "## Each cause, one example",
    ] {
        assert!(md.contains(section), "missing {section}:\n{md}");
    }
    assert_eq!(r.verdicts.len(), 45);
    assert!(md.contains("| upstream | 23 |"), "{md}");
    assert!(md.contains("### firewall/dropped (2 verdicts)"));
    assert!(md.contains("| NETFILTER_DROP") || md.contains("NETFILTER_DROP"), "an example carries its evidence");
    // One example per distinct cause.
    let causes: std::collections::BTreeSet<String> = r.verdicts.iter().map(|v| format!("{:?}/{}", v.class, v.cause)).collect();
    assert_eq!(md.matches("\n### ").count(), causes.len());
}

/// A strict enough well-formedness check: every tag closes in order (void tags excepted).
fn check_balanced(html: &str) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        let end = rest.find('>').ok_or("unclosed <")?;
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') {
            continue;
        }
        let self_closing = tag.ends_with('/');
        let name: String = tag.trim_start_matches('/').chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        if name.is_empty() {
            return Err(format!("bad tag <{tag}>"));
        }
        if self_closing || name == "meta" {
            continue;
        }
        if tag.starts_with('/') {
            let open = stack.pop().ok_or(format!("</{name}> without opening"))?;
            if open != name {
                return Err(format!("</{name}> closes <{open}>"));
            }
        } else {
            stack.push(name);
        }
    }
    if stack.is_empty() { Ok(()) } else { Err(format!("unclosed: {stack:?}")) }
}

#[test]
fn html_is_self_contained_and_holds_the_svg_and_every_verdict() {
    let r = report();
    let html = r.html();
    check_balanced(&html).unwrap();
    assert!(html.contains("<svg") && html.contains("</svg>"));
    assert!(html.matches("class=\"bar\"").count() > 5, "the timeline has bars");
    assert_eq!(html.matches("<tr class=\"verdict\">").count(), r.verdicts.len());
    for needle in ["<script", "src=\"http", "href=\"http", "@import", "url("] {
        assert!(!html.contains(needle), "not self-contained: {needle}");
    }
}

#[test]
fn a_trace_without_failures_says_so() {
    let r = Report::from_trace(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/loss-nginx.jsonl")).unwrap();
    assert!(r.verdicts.is_empty());
    assert!(r.markdown().contains("No 5xx answer"));
    check_balanced(&r.html()).unwrap();
}
