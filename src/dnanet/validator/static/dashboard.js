// The dashboard's plots: reads the page's #chart-data (integers and the divisor that turns
// each series into its unit) and draws one uPlot chart into each element it names.
(function () {
  "use strict";
  var source = document.getElementById("chart-data");
  if (!source || typeof uPlot === "undefined") {
    return;
  }
  var data = JSON.parse(source.textContent);
  var palette = ["#14213d", "#d97706", "#059669", "#1f6feb", "#b91c1c"];
  data.charts.forEach(function (chart) {
    var element = document.getElementById(chart.id);
    if (!element) {
      return;
    }
    var series = [{ label: "epoch" }];
    var columns = [data.epochs];
    chart.series.forEach(function (s, i) {
      series.push({
        label: s.label,
        stroke: palette[i % palette.length],
        width: 2,
        points: { show: true, size: 5 },
        spanGaps: false,
        value: function (u, v) {
          return v == null ? "-" : v.toFixed(chart.digits) + chart.unit;
        },
      });
      columns.push(s.values.map(function (v) {
        return v == null ? null : v / chart.divisor;
      }));
    });
    var options = {
      title: chart.title,
      width: Math.max(320, element.clientWidth - 8),
      height: 220,
      series: series,
      scales: {
        x: { time: false },
        // Scores on their fixed scale; figures from zero up, so a flat line reads as a level.
        y: { range: chart.range ? chart.range : function (u, min, max) {
          return [0, max > 0 ? max * 1.1 : 1];
        } },
      },
      axes: [
        { label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] },
        { size: 64 },
      ],
    };
    element.setAttribute("data-points", String(data.epochs.length));
    new uPlot(options, columns, element);
  });
})();
