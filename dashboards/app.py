"""keyhand results dashboard (Streamlit): where the runs stand against the paper.

    streamlit run dashboards/app.py --server.headless true --browser.gatherUsageStats false \
        --server.address 127.0.0.1 --server.port 8501 -- --params params.yaml
    (or: keyhand dashboard; python -m dashboards.launch)

Pages (``dashboards/views/``): Overview, Tables (the paper's Tables 1-6 beside ours), PCK curves, Gesture CV,
Meshes (Fig. 6 panels and the interactive MANO mesh) and Runs (browse, filter, compare MLflow runs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

_HERE = Path(__file__).resolve().parent
if str(_HERE.parent) not in sys.path:  # `streamlit run dashboards/app.py` from a checkout that is not installed
    sys.path.insert(0, str(_HERE.parent))

from dashboards import data  # noqa: E402

PAGES = [
    st.Page(str(_HERE / "views" / "overview.py"), title="Overview", icon=":material/dashboard:", url_path="overview",
            default=True),
    st.Page(str(_HERE / "views" / "tables.py"), title="Tables", icon=":material/table:", url_path="tables"),
    st.Page(str(_HERE / "views" / "pck.py"), title="PCK curves", icon=":material/show_chart:", url_path="pck"),
    st.Page(str(_HERE / "views" / "gesture.py"), title="Gesture CV", icon=":material/back_hand:", url_path="gesture"),
    st.Page(str(_HERE / "views" / "meshes.py"), title="Meshes", icon=":material/view_in_ar:", url_path="meshes"),
    st.Page(str(_HERE / "views" / "runs.py"), title="Runs", icon=":material/list:", url_path="runs"),
]

st.set_page_config(page_title="keyhand results", page_icon=":material/back_hand:", layout="wide")
page = st.navigation(PAGES)
with st.sidebar:
    st.caption("keyhand · 3D hand pose and shape")
    try:
        proj = data.project()
        st.caption(f"project: `{proj.root}`")
        st.caption(f"MLflow: `{proj.tracking_uri}`")
    except data.ProjectError as e:
        st.caption(f"params: {e}")
    if st.button("Reload data", help=f"MLflow results are cached for {data.TTL_S} s"):
        st.cache_data.clear()
page.run()
