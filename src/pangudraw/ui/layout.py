"""The web UI's layout: one function per tab, each wiring its components to the
:class:`pangudraw.ui.app.App` handlers (the tabs are described in ``app.py``)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..errors import UserError
from ..options import GENERATION, NOISE_POLICIES, SAMPLER_NAMES
from .app import NATIVE, NONE, SEED_MODES, SIZES, SLOTS, App
from .served import card


def build(app: App) -> gr.Blocks:
    """The gradio Blocks of the UI: one function per tab."""
    served = app.served
    with gr.Blocks(title="pangu-draw") as blocks:
        gr.Markdown(
            "## pangu-draw\nTime-decoupled generation and Coop-Diffusion. "
            f"Results are saved with their parameters in `{served.outputs.name}/`."
        )
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                fields, chosen, send_result = _generate_tab(app)
            with gr.Tab("Edit", id="edit"):
                editor, edit_chosen, send_edited = _edit_tab(app)
            with gr.Tab("Coop", id="coop"):
                recipe = _coop_tab(app)
            with gr.Tab("PNG info", id="png-info"):
                dropped, send_png = _png_info_tab(app, fields, recipe, tabs)
            with gr.Tab("Models", id="models"):
                _models_tab(served)
        # "Send to Edit" from a result of either tab or from PNG info: the picture becomes
        # the editor's background (a mask is drawn on it there)
        for button, source in (
            (send_result, chosen),
            (send_edited, edit_chosen),
            (send_png, dropped),
        ):
            button.click(_to_editor, source, [editor, tabs], queue=False)
    return blocks


def _to_editor(path: str | None):
    if not path:
        raise gr.Error("pick a result (click it) or drop a PNG first")
    return {"background": path, "layers": [], "composite": path}, gr.Tabs(selected="edit")


def _chosen(event: gr.SelectData) -> str | None:
    """The path of the gallery item just clicked."""
    value = event.value
    image = value.get("image") if isinstance(value, dict) else None
    return image.get("path") if isinstance(image, dict) else None


def _sizes(limits) -> list[int]:
    return [s for s in SIZES if s <= limits.max_side]


def _generate_tab(app: App) -> list:
    """Prompts, models, sampling settings, results and history; returns the fields a PNG's
    record fills in (PNG info's "Send to Generate")."""
    served, limits = app.served, app.served.limits
    generators = list(served.generators)
    last_seed = gr.State(None)
    with gr.Row():
        with gr.Column(scale=3):
            prompts = gr.Textbox(label="Prompt (one per line)", value="red apple", lines=2)
            negative = gr.Textbox(label="Negative prompt", lines=1)
            with gr.Row():
                structure = gr.Dropdown(generators, value="structure", label="Structure model")
                texture = gr.Dropdown([NONE, *generators], value="texture", label="Texture model")
                split = gr.Slider(1, 999, value=GENERATION["t_split"], step=1, label="Split (t)")
            with gr.Row():
                steps = gr.Slider(
                    1, limits.max_steps, value=GENERATION["steps"], step=1, label="Steps"
                )
                guidance = gr.Slider(
                    1, 15, value=GENERATION["guidance_scale"], step=0.5, label="Guidance"
                )
                true_cfg = gr.Number(
                    value=1.0,
                    minimum=1,
                    label="True CFG (Flux; 1 = off)",
                    elem_id="generate-true-cfg",
                )
                sampler = gr.Dropdown(
                    list(SAMPLER_NAMES), value=GENERATION["sampler"], label="Sampler"
                )
            with gr.Row():
                seed_mode = gr.Radio(list(SEED_MODES), value="random", label="Seed")
                seed = gr.Number(value=0, precision=0, label="Fixed seed")
            with gr.Row():
                width = gr.Dropdown(_sizes(limits), value=64, label="Width")
                height = gr.Dropdown(_sizes(limits), value=64, label="Height")
                num_images = gr.Slider(
                    1, limits.max_images, value=1, step=1, label="Images per prompt"
                )
                preview = gr.Checkbox(value=True, label="Live preview")
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="generate-run")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=2):
            live, status, gallery, chosen, send = _results("generate", "Send to Edit (inpaint)")
    with gr.Accordion("History", open=False) as history_box:
        history = gr.Gallery(
            columns=8,
            height=200,
            fit_columns=False,
            object_fit="contain",
            label="Newest results",
            elem_id="history",
        )
        refresh = gr.Button("Refresh")
    # listed when looked at, not sent with every result
    history_box.expand(served.history, None, history, queue=False)
    refresh.click(served.history, None, history, queue=False)
    fields = [
        prompts,
        negative,
        structure,
        texture,
        split,
        steps,
        guidance,
        true_cfg,
        sampler,
        seed_mode,
        seed,
        width,
        height,
        num_images,
    ]
    outputs = [gallery, live, status, last_seed]
    _wire(app, app.generate, run, stop, [*fields, preview, last_seed], outputs, "generate")
    _model_defaults(app, structure, texture, steps, guidance, api_name="model_defaults")
    return fields, chosen, send


def _edit_tab(app: App):
    """Image to image, inpainting (the mask drawn on the picture) and outpainting
    (margins); returns the editor, the clicked result and its "Send to Edit" button."""
    served, limits = app.served, app.served.limits
    generators = list(served.generators)
    last_seed = gr.State(None)
    with gr.Row():
        with gr.Column(scale=3):
            editor = gr.ImageEditor(
                label="Picture: draw over what to repaint (nothing drawn: image to image)",
                type="filepath",
                sources=["upload", "clipboard"],
                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                eraser=gr.Eraser(),
                height=320,
                elem_id="edit-editor",
            )
            prompts = gr.Textbox(label="Prompt", lines=2, elem_id="edit-prompt")
            negative = gr.Textbox(label="Negative prompt", lines=1)
            with gr.Row():
                structure = gr.Dropdown(generators, value="structure", label="Structure model")
                texture = gr.Dropdown([NONE, *generators], value="texture", label="Texture model")
            with gr.Row():
                strength = gr.Slider(
                    0.01, 1, value=GENERATION["strength"], step=0.01,
                    label="Strength (1 repaints fully)",
                )  # fmt: skip
                blur = gr.Slider(0, 32, value=0, step=1, label="Mask blur (px)")
            with gr.Row():
                margins = [
                    gr.Number(value=0, minimum=0, precision=0, label=f"Outpaint {side} (px)")
                    for side in ("left", "top", "right", "bottom")
                ]
            with gr.Row():
                steps = gr.Slider(
                    1, limits.max_steps, value=GENERATION["steps"], step=1, label="Steps"
                )
                guidance = gr.Slider(
                    1, 15, value=GENERATION["guidance_scale"], step=0.5, label="Guidance"
                )
                sampler = gr.Dropdown(
                    list(SAMPLER_NAMES), value=GENERATION["sampler"], label="Sampler"
                )
            with gr.Row():
                seed_mode = gr.Radio(list(SEED_MODES), value="random", label="Seed")
                seed = gr.Number(value=0, precision=0, label="Fixed seed")
                preview = gr.Checkbox(value=True, label="Live preview")
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="edit-run")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=2):
            live, status, gallery, chosen, send = _results("edit", "Send to Edit (again)")
    inputs = [editor, prompts, negative, structure, texture, strength, blur, *margins]
    inputs += [steps, guidance, sampler, seed_mode, seed, preview, last_seed]
    _wire(app, app.edit, run, stop, inputs, [gallery, live, status, last_seed], "edit")
    _model_defaults(app, structure, texture, steps, guidance)
    return editor, chosen, send


def _results(tab: str, send_label: str):
    """A tab's results column: the live preview, status, gallery, the clicked result and
    its "Send to Edit" button (element ids prefixed by ``tab``)."""
    live = gr.Image(label="Preview", type="pil", height=192)
    status = gr.Markdown(elem_id=f"{tab}-status")
    gallery = gr.Gallery(label="Results", columns=4, height=256, elem_id=f"{tab}-gallery")
    chosen = gr.State(None)
    gallery.select(_chosen, None, chosen, queue=False)
    send = gr.Button(send_label, size="sm", elem_id=f"{tab}-send-edit")
    return live, status, gallery, chosen, send


def _wire(app: App, fn, run, stop, inputs: list, outputs: list, api_name: str) -> None:
    """``run`` renders with ``fn`` in the shared render queue; ``stop`` cancels it
    (``outputs[2]`` is the status line)."""
    event = run.click(fn, inputs, outputs, api_name=api_name, concurrency_id="render")
    stop.click(app.stop, None, outputs[2], cancels=[event], queue=False)


def _model_defaults(app: App, structure, texture, steps, guidance, api_name=None) -> None:
    """A model picked by hand brings its own steps and guidance (a PNG's record sent to
    the tab keeps its own: .input, not .change)."""
    gr.on(
        [structure.input, texture.input],
        app.model_defaults,
        [structure, texture],
        [steps, guidance],
        queue=False,
        api_name=api_name,
    )


def _expert_slot(k: int, generators: list[str], controlnets: list[str], sizes: list[int]):
    """Expert ``k``'s group of the Coop form: (its box, its fields in the form's order)."""
    model, weight = (("full", 0.5), ("generator_b", 0.5))[k] if k < 2 else ("full", 1.0)
    model = model if model in generators else generators[0]
    with gr.Group(visible=k < 2) as box:
        gr.Markdown(f"**Expert {k + 1}**")
        with gr.Row():
            e_model = gr.Dropdown(generators, value=model, label="Model")
            e_prompt = gr.Textbox(label="Own prompt (optional)")
            e_weight = gr.Number(value=weight, label="Weight")
            e_guidance = gr.Number(value=GENERATION["guidance_scale"], label="Guidance")
        with gr.Row():
            e_lo = gr.Number(value=0, label="Window t from")
            e_hi = gr.Number(value=1000, label="Window t to")
            e_size = gr.Dropdown(
                [NATIVE, *(f"{s}x{s}" for s in sizes)],
                value=NATIVE,
                allow_custom_value=True,
                label="Working size (WxH)",
            )
            e_control = gr.Dropdown(controlnets, value=NONE, label="ControlNet")
            e_scale = gr.Number(value=1.0, label="Control scale")
        with gr.Row():
            e_mask = gr.ImageEditor(
                label="Region mask (draw white; empty: everywhere)",
                type="filepath",
                height=200,
            )
            e_image = gr.Image(label="Control image", type="filepath", height=200)
            e_source = gr.Checkbox(value=True, label="Compute the control from this image")
    fields = [e_model, e_prompt, e_weight, e_lo, e_hi, e_guidance, e_mask, e_control]
    return box, [*fields, e_image, e_source, e_scale, e_size]


def _coop_tab(app: App):
    """Up to four experts, the recipe they build (editable), a run; returns the recipe box
    (PNG info's "Send to Coop")."""
    served, limits = app.served, app.served.limits
    generators, controlnets = list(served.generators), [NONE, *served.controlnets]
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                c_prompt = gr.Textbox(label="Prompt", value="grinning face")
                c_negative = gr.Textbox(label="Negative prompt")
            with gr.Row():
                c_seed = gr.Number(value=0, precision=0, label="Seed")
                c_steps = gr.Slider(
                    1, limits.max_steps, value=GENERATION["steps"], step=1, label="Steps"
                )
                c_sampler = gr.Dropdown(
                    list(SAMPLER_NAMES), value=GENERATION["sampler"], label="Sampler"
                )
                c_noise = gr.Dropdown(
                    list(NOISE_POLICIES), value=GENERATION["noise"], label="Noise"
                )
            with gr.Row():
                c_width = gr.Dropdown(_sizes(limits), value=64, label="Canvas width")
                c_height = gr.Dropdown(_sizes(limits), value=64, label="Canvas height")
                c_canvas = gr.Number(value=1, precision=0, label="Canvas expert (number)")
            count = gr.State(2)
            boxes, slots = [], []
            for k in range(SLOTS):
                box, fields = _expert_slot(k, generators, controlnets, _sizes(limits))
                boxes.append(box)
                slots += fields
            with gr.Row():
                add = gr.Button("Add expert")
                remove = gr.Button("Remove expert")
        with gr.Column(scale=2):
            recipe = gr.Code(
                label="Recipe (TOML; edit freely, Run runs this)",
                language=None,
                lines=16,
                elem_id="coop-recipe",
                buttons=["copy", "download"],
            )
            with gr.Row():
                build_button = gr.Button("Build recipe from the form")
                load = gr.UploadButton("Load recipe", file_types=[".toml"])
            c_preview = gr.Checkbox(value=True, label="Live preview")
            with gr.Row():
                c_run = gr.Button("Run", variant="primary", elem_id="coop-run")
                c_stop = gr.Button("Stop", variant="stop")
            c_live = gr.Image(label="Preview", type="pil", height=192)
            c_status = gr.Markdown(elem_id="coop-status")
            c_image = gr.Image(label="Result", type="filepath", height=256, elem_id="coop-image")

    def resize(n: int, delta: int):
        n = max(1, min(SLOTS, n + delta))
        return [n] + [gr.Group(visible=k < n) for k in range(SLOTS)]

    add.click(lambda n: resize(n, 1), count, [count, *boxes], queue=False)
    remove.click(lambda n: resize(n, -1), count, [count, *boxes], queue=False)
    form = [c_prompt, c_negative, c_seed, c_steps, c_sampler, c_noise, c_width, c_height]
    form += [c_canvas, count, *slots]

    def build_recipe(*values):
        try:
            return app.build_recipe(*values)
        except UserError as exc:
            raise gr.Error(str(exc)) from None

    build_button.click(build_recipe, form, recipe, api_name="build_recipe")

    def load_recipe(file):
        from ..files import read_text

        path = Path(file)
        if path.stat().st_size > 100_000:
            raise gr.Error("the recipe file is over 100 kB")
        try:
            return read_text(path, "recipe file")
        except UserError as exc:
            raise gr.Error(str(exc)) from None

    load.upload(load_recipe, load, recipe, queue=False)
    c_event = c_run.click(
        app.coop,
        [recipe, c_preview],
        [c_image, c_live, c_status],
        api_name="coop",
        concurrency_id="render",
    )
    c_stop.click(app.stop, None, c_status, cancels=[c_event], queue=False)
    return recipe


def _png_info_tab(app: App, fields: list, recipe, tabs):
    """Drop a PNG, see its parameters and record, send them to Generate or Coop, or the
    picture to Edit; returns the dropped file and the "Send to Edit" button."""
    record_state = gr.State(None)
    with gr.Row():
        with gr.Column():
            dropped = gr.File(
                label="Drop a PNG made by pangu-draw",
                file_types=[".png"],
                type="filepath",
                elem_id="png-drop",
            )
            with gr.Row():
                send_generate = gr.Button("Send to Generate")
                send_coop = gr.Button("Send to Coop")
                send_edit = gr.Button("Send to Edit")
        with gr.Column():
            parameters = gr.Textbox(label="Parameters", lines=4, elem_id="png-parameters")
            record_view = gr.JSON(label="Record")
    dropped.change(app.png_info, dropped, [parameters, record_view], api_name="png_info").then(
        lambda r: r, record_view, record_state
    )
    send_generate.click(app.to_generate, record_state, [*fields, tabs])
    send_coop.click(app.to_coop, record_state, [recipe, tabs])
    return dropped, send_edit


def _models_tab(served) -> None:
    """The served models' cards and sample grids."""
    for name in [*served.generators, *served.controlnets]:
        spec = served.generators.get(name) or served.controlnets[name]
        if not spec.startswith("zoo:"):
            gr.Markdown(f"### {name}\n`{spec}` (from --models)")
            continue
        text, grid = card(name)
        with gr.Accordion(name, open=False), gr.Row():
            gr.Markdown(text)
            if grid is not None:
                gr.Image(str(grid), label="samples", show_label=False)
