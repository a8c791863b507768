//! PNG plots of benchmark results (plotters, bitmap backend, an embedded font).

use crate::error::invalid;
use crate::Result;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::Path;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// One GEMM measurement, as `docs/bench/gemm-h100.json` stores it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct GemmRecord {
    pub name: String,
    pub layout: String,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub twofour_tflops: Option<f64>,
    pub cublas_tflops: f64,
    pub cusparselt_tflops: Option<f64>,
}

#[derive(serde::Deserialize)]
struct GemmFile {
    device: String,
    commit: String,
    records: Vec<GemmRecord>,
}

fn plot_err(e: impl std::fmt::Display) -> crate::Error {
    invalid("plot", e.to_string())
}

/// Renders speedup over cuBLAS dense of twofour and of cuSPARSELt for every (shape, pass) of a
/// `gemm` bench JSON file into a PNG.
pub fn plot_gemm(json: &Path, png: &Path) -> Result<()> {
    let text = std::fs::read_to_string(json).map_err(|e| invalid("plot_gemm", format!("reading {}: {e}", json.display())))?;
    let file: GemmFile = serde_json::from_str(&text).map_err(|e| invalid("plot_gemm", format!("{} is not a gemm bench file: {e}", json.display())))?;
    let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    let recs = &file.records;
    let ymax = recs
        .iter()
        .flat_map(|r| [r.twofour_tflops, r.cusparselt_tflops].into_iter().flatten().map(|v| v / r.cublas_tflops))
        .fold(1.6f64, f64::max)
        + 0.1;
    let root = BitMapBackend::new(png, (1600, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let title = format!("2:4 sparse GEMM speedup over cuBLAS dense, {} (commit {})", file.device, file.commit);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(150)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..recs.len() as f64 - 0.5, 0.6f64..ymax)
        .map_err(plot_err)?;
    let labels: Vec<String> = recs.iter().map(|r| format!("{} {}", r.name, r.layout)).collect();
    chart
        .configure_mesh()
        .x_labels(recs.len())
        .x_label_formatter(&|x| labels.get(x.round() as usize).cloned().unwrap_or_default())
        .x_label_style(("sans-serif", 11).into_font().transform(FontTransform::Rotate270))
        .y_desc("x cuBLAS dense (dense-equivalent TFLOP/s ratio)")
        .disable_x_mesh()
        .draw()
        .map_err(plot_err)?;
    for (level, color) in [(1.0, BLACK), (1.3, RGBColor(0, 150, 0)), (1.5, RGBColor(150, 150, 150))] {
        chart
            .draw_series(LineSeries::new([(-0.5, level), (recs.len() as f64 - 0.5, level)], color.stroke_width(1)))
            .map_err(plot_err)?
            .label(format!("{level:.1}x"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    let series = |f: fn(&GemmRecord) -> Option<f64>| recs.iter().enumerate().filter_map(move |(i, r)| f(r).map(|v| (i as f64, v / r.cublas_tflops))).collect::<Vec<_>>();
    chart
        .draw_series(series(|r| r.cusparselt_tflops).into_iter().map(|p| Circle::new(p, 5, RGBColor(220, 60, 40).filled())))
        .map_err(plot_err)?
        .label("cuSPARSELt 0.8 (best algorithm)")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, RGBColor(220, 60, 40).filled()));
    chart
        .draw_series(series(|r| r.twofour_tflops).into_iter().map(|p| TriangleMarker::new(p, 7, RGBColor(30, 80, 200).filled())))
        .map_err(plot_err)?
        .label("twofour (wgmma.sp)")
        .legend(|(x, y)| TriangleMarker::new((x + 10, y), 7, RGBColor(30, 80, 200).filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Renders the 90 transposable 4x4 patterns (two kept per row and per column), in the order the
/// mask search scores them (its tie rule picks the first), as a PNG.
pub fn plot_patterns(png: &Path) -> Result<()> {
    let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    let (cols, cell, gap, top) = (15i32, 12i32, 14i32, 50i32);
    let rows = (90 + cols - 1) / cols;
    let (w, h) = (cols * (4 * cell + gap) + gap, top + rows * (4 * cell + gap + 14) + gap);
    let root = BitMapBackend::new(png, (w as u32, h as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    root.draw(&Text::new("The 90 transposable 2:4 patterns of a 4x4 block (dark = kept)", (gap, 14), ("sans-serif", 20)))
        .map_err(plot_err)?;
    for (i, &p) in crate::reference::patterns().iter().enumerate() {
        let (x0, y0) = (gap + (i as i32 % cols) * (4 * cell + gap), top + (i as i32 / cols) * (4 * cell + gap + 14));
        for k in 0..16 {
            let (r, c) = (k / 4, k % 4);
            let kept = p >> k & 1 == 1;
            let color = if kept { RGBColor(30, 80, 200) } else { RGBColor(225, 228, 235) };
            let (x, y) = (x0 + c * cell, y0 + r * cell);
            root.draw(&Rectangle::new([(x, y), (x + cell - 1, y + cell - 1)], color.filled())).map_err(plot_err)?;
        }
        root.draw(&Text::new(format!("{i}"), (x0, y0 + 4 * cell + 1), ("sans-serif", 11))).map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Bars of the speedup tuning bought (untuned default time / tuned time) per table entry.
pub fn plot_tuning(table: &crate::ShapeTable, png: &Path) -> Result<()> {
    let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    let e = &table.entries;
    let ymax = e.iter().map(|x| x.default_ms / x.ms).fold(1.2f64, f64::max) + 0.05;
    let root = BitMapBackend::new(png, (1400, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Speedup of the tuned sparse GEMM over the untuned default, {}", table.gpu), ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(170)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..e.len() as f64 - 0.5, 0.9f64..ymax)
        .map_err(plot_err)?;
    let labels: Vec<String> = e.iter().map(|x| x.pass.clone()).collect();
    chart
        .configure_mesh()
        .x_labels(e.len())
        .x_label_formatter(&|x| labels.get(x.round() as usize).cloned().unwrap_or_default())
        .x_label_style(("sans-serif", 12).into_font().transform(FontTransform::Rotate270))
        .y_desc("default time / tuned time")
        .disable_x_mesh()
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(e.iter().enumerate().map(|(i, x)| Rectangle::new([(i as f64 - 0.35, 0.9), (i as f64 + 0.35, x.default_ms / x.ms)], RGBColor(30, 80, 200).filled())))
        .map_err(plot_err)?;
    chart.draw_series(LineSeries::new([(-0.5, 1.0), (e.len() as f64 - 0.5, 1.0)], BLACK)).map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Train and validation loss curves (step, loss) as a PNG.
pub fn plot_losses(title: &str, train: &[(usize, f32)], val: &[(usize, f32)], png: &Path) -> Result<()> {
    let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    let steps = train.iter().chain(val).map(|p| p.0).max().unwrap_or(1).max(1) as f64;
    let ymax = train.iter().chain(val).map(|p| p.1).fold(0f32, f32::max) as f64 * 1.05 + 1e-3;
    let ymin = train.iter().chain(val).map(|p| p.1).fold(f32::INFINITY, f32::min).min(ymax as f32) as f64 * 0.95;
    let root = BitMapBackend::new(png, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..steps, ymin..ymax)
        .map_err(plot_err)?;
    chart.configure_mesh().x_desc("step").y_desc("loss (nats/token)").label_style(("sans-serif", 14)).draw().map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(train.iter().map(|&(s, l)| (s as f64, l as f64)), RGBColor(30, 80, 200).stroke_width(2)))
        .map_err(plot_err)?
        .label("train")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RGBColor(30, 80, 200)));
    chart
        .draw_series(LineSeries::new(val.iter().map(|&(s, l)| (s as f64, l as f64)), RGBColor(220, 60, 40).stroke_width(2)))
        .map_err(plot_err)?
        .label("validation")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RGBColor(220, 60, 40)));
    chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.9)).border_style(BLACK).label_font(("sans-serif", 16)).draw().map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}
