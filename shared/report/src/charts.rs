//! The report's charts, drawn as SVG by plotters from published figures only (a suppressed
//! figure is never drawn).

use plotters::prelude::*;

use crate::figures::Figures;

const W: u32 = 760;
const H: u32 = 360;
const BLUE: RGBColor = RGBColor(0x1d, 0x4e, 0x89);
const GREY: RGBColor = RGBColor(0x30, 0x30, 0x30);

type Drawn = Result<(), Box<dyn std::error::Error>>;

/// Every chart: (file name, title, SVG text).
pub fn charts(f: &Figures) -> Result<Vec<(&'static str, &'static str, String)>, String> {
    let mut out = Vec::new();
    let mut draw = |file: &'static str, title: &'static str, paint: &dyn Fn(&mut String) -> Drawn| {
        let mut svg = String::new();
        paint(&mut svg).map_err(|e| format!("drawing {file}: {e}"))?;
        out.push((file, title, svg));
        Ok::<(), String>(())
    };
    draw("referrals_per_month.svg", "Referrals per month", &|svg| monthly(svg, f))?;
    draw(
        "time_to.svg",
        "Time from referral (days): median and quartiles",
        &|svg| times(svg, f),
    )?;
    draw("reoffending.svg", "Reoffending with 95% confidence intervals", &|svg| {
        reoffending(svg, f)
    })?;
    draw("interventions.svg", "Interventions completed by kind", &|svg| {
        interventions(svg, f)
    })?;
    Ok(out)
}

/// One bar: its label, its height and, where given, a whisker from low to high.
type Bar = (String, f64, Option<(f64, f64)>);

/// Bars with labels under them and their whiskers.
fn bars(svg: &mut String, bars: &[Bar], y_desc: &str) -> Drawn {
    let root = SVGBackend::with_string(svg, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    if bars.is_empty() {
        // No axes over nothing: say why the chart is empty.
        root.draw(&Text::new(
            "Nothing to draw: every figure is absent or suppressed (fewer than 5).",
            (40, i32::try_from(H / 2).unwrap_or(180)),
            ("sans-serif", 18).into_font().color(&GREY),
        ))?;
        root.present()?;
        return Ok(());
    }
    let n = u32::try_from(bars.len()).unwrap_or(u32::MAX).max(1);
    let top = bars
        .iter()
        .map(|b| b.2.map_or(b.1, |(_, hi)| hi.max(b.1)))
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((0u32..n).into_segmented(), 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len().clamp(1, 24))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars.get(*i as usize).map(|b| b.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .y_desc(y_desc)
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        let mut bar = Rectangle::new(
            [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), b.1)],
            BLUE.filled(),
        );
        bar.set_margin(0, 0, 6, 6);
        bar
    }))?;
    chart.draw_series(bars.iter().enumerate().filter_map(|(i, b)| {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        b.2.map(|(lo, hi)| {
            PathElement::new(
                vec![(SegmentValue::CenterOf(i), lo), (SegmentValue::CenterOf(i), hi)],
                GREY.stroke_width(3),
            )
        })
    }))?;
    root.present()?;
    Ok(())
}

fn monthly(svg: &mut String, f: &Figures) -> Drawn {
    if f.monthly.iter().all(|(_, c)| c.is_none()) {
        return bars(svg, &[], "referrals");
    }
    let b: Vec<_> = f
        .monthly
        .iter()
        .map(|(m, c)| (m.clone(), c.unwrap_or(0) as f64, None))
        .collect();
    bars(svg, &b, "referrals (months with 1-4 left blank)")
}

fn times(svg: &mut String, f: &Figures) -> Drawn {
    let b: Vec<_> = f
        .times
        .iter()
        .map(|(stage, q1, med, q3)| (stage.clone(), *med, Some((*q1, *q3))))
        .collect();
    bars(svg, &b, "days: median, whisker lower to upper quartile")
}

fn reoffending(svg: &mut String, f: &Figures) -> Drawn {
    let b: Vec<_> = f
        .reoffending
        .iter()
        .map(|(label, rate, lo, hi)| (label.clone(), rate * 100.0, Some((lo * 100.0, hi * 100.0))))
        .collect();
    bars(svg, &b, "% reoffended, whisker 95% CI")
}

fn interventions(svg: &mut String, f: &Figures) -> Drawn {
    let b: Vec<_> = f
        .interventions
        .iter()
        .map(|(k, c)| (k.clone(), *c as f64, None))
        .collect();
    bars(svg, &b, "completed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_draw_published_figures_only() {
        let f = Figures {
            tables: Vec::new(),
            monthly: vec![("2026-01".into(), Some(12)), ("2026-02".into(), None)],
            reoffending: vec![("completed – 6 months".into(), 0.176, 0.12, 0.24)],
            times: vec![("screening".into(), 0.5, 1.0, 2.0)],
            interventions: vec![("therapeutic".into(), 40)],
        };
        let drawn = charts(&f).unwrap();
        assert_eq!(drawn.len(), 4);
        for (file, _, svg) in &drawn {
            assert!(svg.contains("<svg") && svg.contains("</svg>"), "{file}");
        }
        assert!(drawn[0].2.contains("2026-01"), "month labels drawn");
        assert!(drawn[2].2.contains("completed – 6 months"), "group labels drawn");
        let empty = charts(&Figures {
            tables: Vec::new(),
            monthly: vec![("2026-01".into(), None)],
            reoffending: Vec::new(),
            times: Vec::new(),
            interventions: Vec::new(),
        })
        .unwrap();
        assert!(
            empty.iter().all(|(_, _, svg)| svg.contains("Nothing to draw")),
            "an empty chart says why"
        );
    }
}
