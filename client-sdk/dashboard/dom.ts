/** Attributes, class and text of a new element. */
export interface ElementProps {
  className?: string;
  text?: string;
  attributes?: Record<string, string>;
}

/** Creates an element with `props` and appends `children` to it. */
export function element<Tag extends keyof HTMLElementTagNameMap>(
  tag: Tag,
  props: ElementProps = {},
  ...children: Node[]
): HTMLElementTagNameMap[Tag] {
  const node = document.createElement(tag);
  if (props.className !== undefined) node.className = props.className;
  if (props.text !== undefined) node.textContent = props.text;
  for (const [name, value] of Object.entries(props.attributes ?? {})) {
    node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

/** Returns the element with `id`, or throws when the page lacks it. */
export function requireElement<Type extends HTMLElement>(
  id: string,
  type: new () => Type,
): Type {
  const node = document.getElementById(id);
  if (!(node instanceof type)) {
    throw new Error(`dashboard page is missing element #${id}`);
  }
  return node;
}
